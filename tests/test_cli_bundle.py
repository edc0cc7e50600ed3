"""``python -m pyruntime bundle ...`` and ``cache ...``: real files, real
kernels, and one clear line (no traceback) for every user mistake."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

import bundle_kernels
from pyruntime.bundle import collect as bundler
from pyruntime.bundle.collect import collect_dir
from pyruntime.bundle.compat import installed_triton_abi
from pyruntime.bundle.format import load_bundle
from pyruntime.cli import main
from pyruntime.hashing import hash_dir


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    return bundle_kernels.shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle_file(kernel_cache, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "k.prtb")
    assert main(["bundle", "create", "--cache-dir", kernel_cache[0], "-o", path]) == 0
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True, timeout=120)


def _one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], err


def test_create_inspect_verify_restore_in_real_processes(kernel_cache, tmp_path):
    cache_dir, hashes = kernel_cache
    out = tmp_path / "b.prtb"
    r = run_cli("bundle", "create", "--cache-dir", cache_dir, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{len(hashes)} kernels" in r.stdout and "cuda:90" in r.stdout
    assert load_bundle(out) == collect_dir(cache_dir)

    r = run_cli("bundle", "verify", str(out))
    assert r.returncode == 0 and "OK" in r.stdout and load_bundle(out).content_digest in r.stdout

    r = run_cli("bundle", "inspect", str(out))
    assert r.returncode == 0, r.stderr
    for fn, _, _ in bundle_kernels.SAMPLES:
        assert fn.__name__ in r.stdout
    for h in hashes:
        assert h in r.stdout
    assert "compression ratio" in r.stdout and "cuda:90" in r.stdout and "3.9.0" in r.stdout

    target = tmp_path / "restored"
    r = run_cli("bundle", "restore", str(out), "--cache-dir", str(target))
    assert r.returncode == 0, r.stderr
    assert f"restored {len(hashes)} kernels" in r.stdout
    assert collect_dir(target) == collect_dir(cache_dir)
    r = run_cli("bundle", "restore", str(out), "--cache-dir", str(target))
    assert "restored 0 kernels" in r.stdout and f"{len(hashes)} already present" in r.stdout


def test_restore_uses_triton_cache_dir_by_default(bundle_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "tcd"))
    assert main(["bundle", "restore", bundle_file]) == 0
    assert len(os.listdir(tmp_path / "tcd")) == len(load_bundle(bundle_file))


def test_inspect_json(bundle_file, capsys):
    assert main(["bundle", "inspect", bundle_file, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    b = load_bundle(bundle_file)
    assert info["content_digest"] == b.content_digest
    assert info["file_size"] == os.path.getsize(bundle_file)
    assert info["raw_size"] == b.size and info["compression_ratio"] > 2
    assert sorted(n for k in info["kernels"] for n in k["names"]) == sorted(b.kernel_names())
    assert info["targets"] == ["cuda:90"] and info["triton_version"] == "3.9.0"
    assert info["triton_abi"] == installed_triton_abi()


def test_create_selected_kernels(kernel_cache, tmp_path, capsys):
    cache_dir, hashes = kernel_cache
    out = str(tmp_path / "two.prtb")
    assert main(["bundle", "create", "--cache-dir", cache_dir, "-o", out, "--kernel", hashes[0],
                 "--kernel", hashes[2]]) == 0
    assert [k.kernel_hash for k in load_bundle(out).kernel_artifacts] == [hashes[0], hashes[2]]
    assert main(["bundle", "create", "--cache-dir", cache_dir, "-o", out, "--kernel", "NOPE"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bundle", "create", "--cache-dir", cache_dir, "-o", out, "--kernel", "../x"]) == 2
    assert "not a plain directory name" in capsys.readouterr().err


def test_cache_hash_matches_hash_dir(kernel_cache, capsys):
    assert main(["cache", "hash", kernel_cache[0]]) == 0
    assert capsys.readouterr().out.strip() == hash_dir(kernel_cache[0])


def test_cache_clean_dry_run_and_all(tmp_path, capsys):
    (tmp_path / "tmp.x").mkdir()
    assert main(["cache", "clean", str(tmp_path), "--dry-run", "--all"]) == 0
    assert "would remove" in capsys.readouterr().out and (tmp_path / "tmp.x").exists()
    assert main(["cache", "clean", str(tmp_path)]) == 0  # young and pid-less: kept
    assert (tmp_path / "tmp.x").exists() and "kept 1" in capsys.readouterr().out
    assert main(["cache", "clean", str(tmp_path), "--max-age", "0"]) == 0
    assert not (tmp_path / "tmp.x").exists()


# --------------------------------------------------------------------------
# user errors: one line, non-zero status, nothing written


def test_corrupt_bundle_is_refused_everywhere(bundle_file, tmp_path):
    data = bytearray(open(bundle_file, "rb").read())
    # eight bytes, not one: a single flipped bit in an LZ4 match offset can
    # point at identical earlier bytes and decode to the very same content
    # (correctly accepted); where that happens depends on the kernels' paths
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0x40
    bad = tmp_path / "bad.prtb"
    bad.write_bytes(bytes(data))
    target = tmp_path / "cache"

    r = run_cli("bundle", "verify", str(bad))
    assert r.returncode == 1
    _one_line_error(r.stderr, str(bad), "INVALID")

    r = run_cli("bundle", "restore", str(bad), "--cache-dir", str(target))
    assert r.returncode == 2
    _one_line_error(r.stderr, "pyruntime: error:", str(bad))
    assert not target.exists()

    r = run_cli("bundle", "inspect", str(bad))
    assert r.returncode == 2
    _one_line_error(r.stderr, str(bad))


def test_truncated_and_foreign_files(bundle_file, tmp_path, capsys):
    trunc = tmp_path / "t.prtb"
    trunc.write_bytes(open(bundle_file, "rb").read()[:100])
    assert main(["bundle", "verify", str(trunc)]) == 1
    assert "truncated" in capsys.readouterr().err
    pickle_like = tmp_path / "p.pkl"
    import pickle

    pickle_like.write_bytes(pickle.dumps({"kernel_artifacts": []}))
    assert main(["bundle", "restore", str(pickle_like), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "bad magic" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv,needle", [
    (["bundle", "verify", "/nonexistent/x.prtb"], "no such file"),
    (["bundle", "inspect", "/nonexistent/x.prtb"], "no such file"),
    (["bundle", "restore", "/nonexistent/x.prtb"], "no such file"),
    (["bundle", "create", "--cache-dir", "/nonexistent/dir", "-o", "/tmp/x.prtb"], "no such directory"),
    (["cache", "hash", "/nonexistent/dir"], "no such directory"),
    (["cache", "clean", "/nonexistent/dir"], "no such directory"),
])
def test_missing_paths(argv, needle, capsys):
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, needle)


def test_paths_of_the_wrong_kind(bundle_file, tmp_path, capsys):
    assert main(["bundle", "verify", str(tmp_path)]) == 2
    _one_line_error(capsys.readouterr().err, "is a directory")
    assert main(["cache", "hash", bundle_file]) == 2
    _one_line_error(capsys.readouterr().err, "not a directory")
    assert main(["bundle", "restore", bundle_file, "--cache-dir", bundle_file]) == 2
    _one_line_error(capsys.readouterr().err, "not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bundle", "create", "--cache-dir", str(empty), "-o", str(tmp_path / "o.prtb")]) == 2
    _one_line_error(capsys.readouterr().err, "nothing to bundle")
    assert not (tmp_path / "o.prtb").exists()


def test_create_into_a_missing_directory(kernel_cache, tmp_path):
    r = run_cli("bundle", "create", "--cache-dir", kernel_cache[0], "-o", str(tmp_path / "no" / "x.prtb"))
    assert r.returncode == 2
    _one_line_error(r.stderr, "No such file or directory")


def test_create_refuses_sentinel_and_writes_nothing(kernel_cache, tmp_path):
    cache_dir, hashes = kernel_cache
    root = tmp_path / "cache"
    shutil.copytree(cache_dir, root)
    meta = next(p for p in (root / hashes[0]).iterdir() if p.suffix == ".json" and not p.name.startswith("__grp__"))
    meta.write_text(meta.read_text().replace('"debug"', '"[REPLACE]"'))
    out = tmp_path / "x.prtb"
    r = run_cli("bundle", "create", "--cache-dir", str(root), "-o", str(out))
    assert r.returncode == 2
    _one_line_error(r.stderr, "[REPLACE]", meta.name)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["cache"]


def test_restore_mismatch_policies(bundle_file, tmp_path, capsys):
    b = load_bundle(bundle_file)
    old = dataclasses.replace(b, kernel_artifacts=[dataclasses.replace(k, triton_version="3.0.0")
                                                   for k in b.kernel_artifacts])
    path = str(tmp_path / "old.prtb")
    old.save(path)
    target = tmp_path / "cache"
    assert main(["bundle", "restore", path, "--cache-dir", str(target), "--on-mismatch", "error"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "built with triton 3.0.0", "nothing was written")
    assert not target.exists()
    assert main(["bundle", "restore", path, "--cache-dir", str(target)]) == 0
    captured = capsys.readouterr()
    assert f"{len(b)} skipped" in captured.out and "built with triton 3.0.0" in captured.err
    assert not target.exists()
    assert main(["bundle", "restore", path, "--cache-dir", str(target), "--on-mismatch", "force"]) == 0
    assert len(os.listdir(target)) == len(b)
    assert main(["bundle", "restore", bundle_file, "--cache-dir", str(tmp_path / "t"), "--target", "cuda:80",
                 "--on-mismatch", "error"]) == 2
    assert "expected cuda:80" in capsys.readouterr().err


OTHER_ABI = "cpython-312-x86_64-linux-gnu" if installed_triton_abi() != "cpython-312-x86_64-linux-gnu" \
    else "cpython-311-x86_64-linux-gnu"


def test_python_abi_in_inspect_and_restore(kernel_cache, bundle_file, tmp_path, monkeypatch, capsys):
    """A bundle created under another Python (ABI probe patched for the
    create) is shown as such and is a mismatch for restore."""
    assert main(["bundle", "inspect", bundle_file]) == 0
    out = capsys.readouterr().out
    assert f"python abi      {installed_triton_abi()}\n" in out

    path = str(tmp_path / "foreign.prtb")
    with monkeypatch.context() as m:
        m.setattr(bundler, "installed_triton_abi", lambda: OTHER_ABI)
        assert main(["bundle", "create", "--cache-dir", kernel_cache[0], "-o", path]) == 0
    capsys.readouterr()
    n = len(load_bundle(path))
    assert main(["bundle", "inspect", path]) == 0
    out = capsys.readouterr().out
    assert f"python abi      {OTHER_ABI} (this interpreter is {installed_triton_abi()}" in out
    assert "would not use these kernels" in out
    assert main(["bundle", "inspect", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["triton_abi"] == OTHER_ABI

    target = tmp_path / "cache"
    assert main(["bundle", "restore", path, "--cache-dir", str(target), "--on-mismatch", "error"]) == 2
    _one_line_error(capsys.readouterr().err, f"Python ABI {OTHER_ABI}", "rebuild the bundle under the target's Python",
                    "nothing was written")
    assert not target.exists()
    assert main(["bundle", "restore", path, "--cache-dir", str(target)]) == 0
    captured = capsys.readouterr()
    assert "restored 0 kernels" in captured.out and f"{n} skipped" in captured.out
    assert "warning:" in captured.err and "differs per Python version" in captured.err
    assert not target.exists()
    assert main(["bundle", "restore", path, "--cache-dir", str(target), "--on-mismatch", "force"]) == 0
    assert f"restored {n} kernels" in capsys.readouterr().out
    assert collect_dir(target) == collect_dir(kernel_cache[0])


def test_inspect_a_bundle_without_an_abi(bundle_file, tmp_path, capsys):
    path = str(tmp_path / "old.prtb")
    dataclasses.replace(load_bundle(bundle_file), triton_abi=None).save(path)
    assert main(["bundle", "inspect", path]) == 0
    assert "python abi      unknown (not recorded)" in capsys.readouterr().out
    assert main(["bundle", "restore", path, "--cache-dir", str(tmp_path / "c"), "--on-mismatch", "error"]) == 0


def test_usage_errors_exit_2_without_traceback():
    r = run_cli("bundle")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("bundle", "restore", "x", "--on-mismatch", "sometimes")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
