"""Bundles carry the autotuner's saved timings (every config, not only the
winner): a launcher restoring them skips benchmarking. The entry is written
here through Triton's own cache manager, the way its autotuner saves it,
and found again through it after a restore."""

from __future__ import annotations

import hashlib
import json

import pytest

triton = pytest.importorskip("triton")

from pyruntime.bundle import TritonBundle, collect_dir  # noqa: E402
from pyruntime.cli import main  # noqa: E402

TIMINGS = {"key": [1024, "torch.float16"],
           "configs_timings": [[{"kwargs": {"BLOCK": b}, "num_warps": w, "num_stages": 3, "num_ctas": 1,
                                 "maxnreg": None, "pre_hook": None}, [t, t, t]]
                               for b, w, t in ((256, 4, 0.031), (512, 4, 0.024), (1024, 8, 0.027))]}


def _triton_cache_manager(monkeypatch, cache_dir, key):
    from triton.runtime.cache import get_cache_manager

    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache_dir))  # read at each call (a knob left unset)
    return get_cache_manager(key)


@pytest.fixture
def tuned_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    key = hashlib.sha256(b"triton key-backend-fn-env-(1024, 'torch.float16')-configs").hexdigest()
    _triton_cache_manager(monkeypatch, cache, key).put(json.dumps(TIMINGS), "add_kernel.autotune.json", binary=False)
    return cache, key


def test_autotune_results_are_collected_and_restored_where_triton_looks(tuned_cache, tmp_path, monkeypatch):
    cache, key = tuned_cache
    bundle = collect_dir(cache)  # no hashes: the autotune entry counts as complete
    (entry,) = bundle.kernel_artifacts
    assert entry.kind == "autotune"  # its name: the key as Triton spells directories (hex or base32)
    path = tmp_path / "b.prtb"
    bundle.save(path)
    loaded = TritonBundle.load(path)
    dest = tmp_path / "dest"
    result = loaded.restore(dest)
    assert result.restored == [entry.kernel_hash]
    found = _triton_cache_manager(monkeypatch, dest, key).get_file("add_kernel.autotune.json")
    assert found is not None
    with open(found) as f:
        assert json.load(f) == TIMINGS  # every config's timing, not only the winner


def test_inspect_lists_autotune_results(tuned_cache, tmp_path, capsys):
    cache, _ = tuned_cache
    out = str(tmp_path / "b.prtb")
    assert main(["bundle", "create", "--cache-dir", str(cache), "-o", out]) == 0
    capsys.readouterr()
    assert main(["bundle", "inspect", out]) == 0
    text = capsys.readouterr().out
    assert "autotune results" in text and "autotune" in text
