"""Lazy restore: pyruntime.bundle.lazy.LazyBundle on its own, and
pyruntime.triton_cache.BundleCacheManager / StoreRemoteBackend plugged into
real Triton (TRITON_CACHE_MANAGER, TRITON_REMOTE_CACHE_BACKEND) in fresh
processes that compile real kernels for cuda:90 (no GPU needed): a kernel a
bundle holds is a cache hit and the only one written; anything else
compiles as usual; a store or bundle that fails falls back by policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

import bundle_kernels
import pyruntime
from pyruntime.bench import _servers as S
from pyruntime.bundle.lazy import INDEX_SUFFIX, LazyBundle
from pyruntime.errors import BundleFormatError
from pyruntime.store import open_store
from servers import assert_kernels, expected_files, kernel_dirs, redis_server, unique_prefix  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "triton_cache_child.py")
MANAGER = "pyruntime.triton_cache:BundleCacheManager"


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """Bundles of the sample kernels: ``full`` (all four), ``part`` (samples
    0 and 1); ``keys[i]`` is sample i's cache directory name."""
    cache_dir, keys = bundle_kernels.shared_cache(tmp_path_factory)
    out = tmp_path_factory.mktemp("lazy-bundles")
    full, part = str(out / "full.prtb"), str(out / "part.prtb")
    pyruntime.collect_dir(cache_dir).save(full)
    pyruntime.collect_dir(cache_dir, keys[:2]).save(part)
    return {"full": full, "part": part, "keys": list(keys), "src": cache_dir}


def child(*args: str, env: dict[str, str], timeout: float = 120) -> dict:
    full = dict(os.environ)
    full.pop("TRITON_CACHE_MANAGER", None)
    full.pop("PYRUNTIME_BUNDLES", None)
    full["PYTHONPATH"] = os.pathsep.join([ROOT, full.get("PYTHONPATH", "")])
    full.update(env)
    r = subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True, env=full, cwd=ROOT,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def manager_env(cache: str, bundles_spec: str, **extra: str) -> dict[str, str]:
    return {"TRITON_CACHE_DIR": cache, "TRITON_CACHE_MANAGER": MANAGER, "PYRUNTIME_BUNDLES": bundles_spec,
            **extra}


def no_litter(cache: str) -> None:
    assert [n for n in os.listdir(cache) if n.startswith("tmp.")] == []


# --------------------------------------------------------------------------
# LazyBundle


def test_materialize_writes_one_kernel_exactly_as_a_restore_would(bundles, tmp_path):
    keys = bundles["keys"]
    with LazyBundle.open(bundles["full"], index_dir=tmp_path / "idx") as b:
        assert sorted(b.kernel_hashes) == sorted(keys) and len(b) == 4 and keys[2] in b
        assert b.content_digest == pyruntime.TritonBundle.load(bundles["full"]).content_digest
        cache = str(tmp_path / "cache")
        assert b.materialize(keys[2], cache) is True
        assert_kernels(cache, bundles["full"], only=[keys[2]])
        assert b.materialize(keys[2], cache) is False  # there already: left alone
        with pytest.raises(KeyError):
            b.materialize("NOSUCHKERNEL", cache)
        with pytest.raises(BundleFormatError, match="not a plain directory name"):
            b.materialize("../etc", cache)
        for k in keys:
            b.materialize(k, cache)
        assert_kernels(cache, bundles["full"])
        no_litter(cache)


def test_the_lookup_index_is_built_once_then_reused_and_rebuilt_when_wrong(bundles, tmp_path):
    idx = tmp_path / "idx"
    with LazyBundle.open(bundles["full"], index_dir=idx) as b:
        assert b.index_built
    (kept,) = os.listdir(idx)
    assert kept.endswith(INDEX_SUFFIX)
    with LazyBundle.open(bundles["full"], index_dir=idx) as b:
        assert not b.index_built and sorted(b.kernel_hashes) == sorted(bundles["keys"])
    # damaged: rebuilt (and rewritten)
    path = idx / kept
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with LazyBundle.open(bundles["full"], index_dir=idx) as b:
        assert b.index_built
        b.materialize(bundles["keys"][0], str(tmp_path / "c1"))
    with LazyBundle.open(bundles["full"], index_dir=idx) as b:
        assert not b.index_built
    # another bundle at the same path: its own index, never the old one
    moving = tmp_path / "moving.prtb"
    moving.write_bytes(open(bundles["full"], "rb").read())
    with LazyBundle.open(moving, index_dir=idx) as b:
        assert len(b) == 4
    moving.write_bytes(open(bundles["part"], "rb").read())
    with LazyBundle.open(moving, index_dir=idx) as b:
        assert b.index_built and sorted(b.kernel_hashes) == sorted(bundles["keys"][:2])
    assert_kernels(str(tmp_path / "c1"), bundles["full"], only=[bundles["keys"][0]])


def test_a_damaged_container_is_refused_at_open_naming_the_file(bundles, tmp_path):
    whole = open(bundles["full"], "rb").read()
    cases = {
        "cut": (whole[:-10], "truncated"),
        "index": (whole[:40] + bytes([whole[40] ^ 0xFF]) + whole[41:], "index checksum mismatch"),
        "magic": (b"XXXX" + whole[4:], "bad magic"),
        "extra": (whole + b"\0", "trailing bytes"),
    }
    for name, (data, text) in cases.items():
        path = tmp_path / f"{name}.prtb"
        path.write_bytes(data)
        with pytest.raises(BundleFormatError) as e:
            LazyBundle.open(path, index_dir=tmp_path / "idx")
        assert str(e.value).startswith(str(path)) and text in str(e.value), str(e.value)
    assert not os.path.exists(tmp_path / "idx")


def _blob_span(bundle_path: str, kernel: str) -> tuple[int, int]:
    """(file offset, stored size) of the blob holding ``kernel``."""
    with LazyBundle.open(bundle_path) as b:
        ix = b._index
        k = ix.where[kernel]
        blob = ix.files[4 * ix.kernels[2 * k]]
        return ix.blobs[5 * blob], ix.blobs[5 * blob + 1]


def test_a_damaged_blob_fails_only_its_kernel_and_writes_nothing(bundles, tmp_path):
    keys = bundles["keys"]
    off, size = _blob_span(bundles["full"], keys[1])
    data = bytearray(open(bundles["full"], "rb").read())
    for i in range(off + size // 3, off + size // 3 + 16):
        data[i] ^= 0x5A
    bad = tmp_path / "bad.prtb"
    bad.write_bytes(bytes(data))
    cache = str(tmp_path / "cache")
    with LazyBundle.open(bad) as b:  # the index and JSON entries are fine
        with pytest.raises(BundleFormatError) as e:
            b.materialize(keys[1], cache)
        msg = str(e.value)
        assert "\n" not in msg and str(bad) in msg and keys[1] in msg and "blob." in msg, msg
        assert b.materialize(keys[0], cache)
    assert_kernels(cache, bundles["full"], only=[keys[0]])
    no_litter(cache)


def test_threads_materializing_one_kernel_write_it_once(bundles, tmp_path):
    cache = str(tmp_path / "cache")
    wrote: list[bool] = []
    with LazyBundle.open(bundles["full"]) as b:
        barrier = threading.Barrier(16)

        def one() -> None:
            barrier.wait()
            wrote.append(b.materialize(bundles["keys"][3], cache))

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert wrote.count(True) == 1 and len(wrote) == 16
    assert_kernels(cache, bundles["full"], only=[bundles["keys"][3]])
    no_litter(cache)


# --------------------------------------------------------------------------
# BundleCacheManager in real Triton


@pytest.mark.timeout(120)
def test_triton_hits_a_bundled_kernel_and_only_it_is_written(bundles, tmp_path):
    keys = bundles["keys"]
    cache = str(tmp_path / "cache")
    out = child("compile", "0", env=manager_env(cache, bundles["full"]))
    assert "error" not in out, out
    assert out["compiled"] == [{"key": keys[0], "hex": out["compiled"][0]["hex"], "hit": True}]
    assert_kernels(cache, bundles["full"], only=[keys[0]])
    assert out["warnings"] == []
    # a later process: two more lookups, the first kernel is already there
    out = child("compile", "0", "3", env=manager_env(cache, bundles["full"]))
    assert [c["hit"] for c in out["compiled"]] == [True, True]
    assert_kernels(cache, bundles["full"], only=[keys[0], keys[3]])
    no_litter(cache)


@pytest.mark.timeout(120)
def test_tritons_own_get_group_finds_the_kernel_written_on_demand(bundles, tmp_path):
    keys = bundles["keys"]
    cache = str(tmp_path / "cache")
    import base64

    hexkey = base64.b32decode(keys[2] + "=" * (-len(keys[2]) % 8)).hex()
    name = bundle_kernels.SAMPLES[2][0].__name__
    out = child("group", hexkey, f"{name}.json", env=manager_env(cache, bundles["full"]))
    group = out["group"]
    assert group and f"{name}.json" in group and f"{name}.cubin" in group, out
    for path in group.values():
        assert os.path.dirname(path) == os.path.join(cache, keys[2]) and os.path.isfile(path)
    assert_kernels(cache, bundles["full"], only=[keys[2]])


@pytest.mark.timeout(120)
def test_a_kernel_no_bundle_holds_compiles_as_usual(bundles, tmp_path):
    keys = bundles["keys"]
    cache = str(tmp_path / "cache")
    out = child("compile", "2", "1", env=manager_env(cache, bundles["part"]))
    assert [c["hit"] for c in out["compiled"]] == [False, True], out
    assert kernel_dirs(cache) == sorted([keys[1], keys[2]])
    want = expected_files(bundles["part"], cache)[keys[1]]
    for name, data in want.items():
        assert (tmp_path / "cache" / keys[1] / name).read_bytes() == data
    # the compiled one is Triton's own (every file of the reference compile)
    assert sorted(os.listdir(os.path.join(cache, keys[2]))) == sorted(os.listdir(os.path.join(bundles["src"], keys[2])))


@pytest.mark.timeout(120)
def test_the_lookup_index_is_kept_in_the_cache_for_the_next_process(bundles, tmp_path):
    cache = str(tmp_path / "cache")
    spec = f"{bundles['part']},{bundles['full']}"
    first = child("open", env=manager_env(cache, spec))
    assert first["open"] == {"kernels": 4, "built": [True, True]}, first
    again = child("open", env=manager_env(cache, spec))
    assert again["open"] == {"kernels": 4, "built": [False, False]}, again
    assert kernel_dirs(cache) == []  # opening writes no kernel
    assert len(os.listdir(os.path.join(cache, ".pyruntime", "index"))) == 2


@pytest.mark.timeout(120)
def test_a_bad_bundle_entry_warns_and_triton_compiles(bundles, tmp_path):
    keys = bundles["keys"]
    off, size = _blob_span(bundles["full"], keys[0])
    data = bytearray(open(bundles["full"], "rb").read())
    for i in range(off + size // 2, off + size // 2 + 16):
        data[i] ^= 0x5A
    bad = tmp_path / "bad.prtb"
    bad.write_bytes(bytes(data))
    cache = str(tmp_path / "cache")
    missing = str(tmp_path / "missing.prtb")
    out = child("compile", "0", "1", env=manager_env(cache, f"{missing},{bad}"))
    assert [c["hit"] for c in out["compiled"]] == [False, True], out
    assert any("missing.prtb is not used" in w for w in out["warnings"]), out["warnings"]
    assert any(f"kernel {keys[0]}" in w and "was not written" in w for w in out["warnings"]), out["warnings"]
    no_litter(cache)
    err = child("compile", "0", env=manager_env(str(tmp_path / "c2"), str(bad), PYRUNTIME_STORE_ON_ERROR="error"))
    assert err["error"].startswith("BundleFormatError: kernel ") and "was not written" in err["error"], err


@pytest.mark.timeout(180)
def test_many_processes_looking_up_one_kernel_all_hit_and_it_is_written_once(bundles, tmp_path):
    cache = str(tmp_path / "cache")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.update(manager_env(cache, bundles["full"]))
    procs = [subprocess.Popen([sys.executable, CHILD, "compile", "3"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(6)]
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, err[-2000:]
        res = json.loads(out.strip().splitlines()[-1])
        assert [c["hit"] for c in res["compiled"]] == [True], res
    assert_kernels(cache, bundles["full"], only=[bundles["keys"][3]])
    no_litter(cache)


# --------------------------------------------------------------------------
# bundles from a store


@pytest.mark.timeout(180)
def test_a_store_url_in_pyruntime_bundles_is_pulled_once_and_served(bundles, tmp_path, redis_server):
    keys = bundles["keys"]
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    with open_store(url) as store:
        digest = store.push(bundles["full"], name="model:v1")
    cache = str(tmp_path / "cache")
    out = child("compile", "1", env=manager_env(cache, f"{url}#model:v1"))
    assert [c["hit"] for c in out["compiled"]] == [True] and out["warnings"] == [], out
    local = os.path.join(cache, ".pyruntime", "bundles", f"{digest}.prtb")
    assert open(local, "rb").read() == open(bundles["full"], "rb").read()
    assert_kernels(cache, bundles["full"], only=[keys[1]])
    # by digest, with its file there: no store needed (this one is down)
    dead = f"redis://127.0.0.1:{S.free_port()}/0#{digest}"
    out = child("compile", "2", env=manager_env(cache, dead))
    assert [c["hit"] for c in out["compiled"]] == [True] and out["warnings"] == [], out


@pytest.mark.timeout(180)
def test_a_store_that_is_down_falls_back_to_compiling_with_a_warning(bundles, tmp_path):
    port = S.free_port()
    spec = f"redis://127.0.0.1:{port}/0#model:v1"
    cache = str(tmp_path / "cache")
    out = child("compile", "0", env=manager_env(cache, spec))
    assert [c["hit"] for c in out["compiled"]] == [False], out
    (w,) = out["warnings"]
    assert "is not used" in w and "Connection refused" in w and "Triton compiles" in w, w
    assert kernel_dirs(cache) == [bundles["keys"][0]]  # compiled here
    err = child("compile", "0", env=manager_env(str(tmp_path / "c2"), spec, PYRUNTIME_STORE_ON_ERROR="error"))
    assert err["error"].startswith("StoreUnavailableError: bundle ") and "Connection refused" in err["error"], err


# --------------------------------------------------------------------------
# Triton's own remote-cache path


@pytest.mark.timeout(240)
def test_tritons_remote_cache_manager_uses_the_store_and_the_bundles(bundles, tmp_path, redis_server):
    keys = bundles["keys"]
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    remote = {"TRITON_CACHE_MANAGER": "triton.runtime.cache:RemoteCacheManager",
              "TRITON_REMOTE_CACHE_BACKEND": "pyruntime.triton_cache:StoreRemoteBackend",
              "PYRUNTIME_TRITON_STORE": url}
    # 1. a miss: Triton compiles and puts every file into the store
    a = child("compile", "2", env={"TRITON_CACHE_DIR": str(tmp_path / "a"), **remote})
    assert [c["hit"] for c in a["compiled"]] == [False], a
    with open_store(url) as store:
        names = os.listdir(os.path.join(bundles["src"], keys[2]))
        files = store.get_triton_files(keys[2], names)
        assert sorted(files) == sorted(names)
    # 2. another machine (an empty local cache): a hit from the store
    b = child("compile", "2", env={"TRITON_CACHE_DIR": str(tmp_path / "b"), **remote})
    assert [c["hit"] for c in b["compiled"]] == [True], b
    # 3. a bundled kernel, never put in the store: a hit from the bundle
    c = child("compile", "0", env={"TRITON_CACHE_DIR": str(tmp_path / "c"), "PYRUNTIME_BUNDLES": bundles["full"],
                                   **remote})
    assert [x["hit"] for x in c["compiled"]] == [True] and c["warnings"] == [], c
    grp = [n for n in os.listdir(tmp_path / "c" / keys[0]) if n.startswith("__grp__")]
    assert grp and b"[REPLACE]" not in (tmp_path / "c" / keys[0] / grp[0]).read_bytes()
    # 4. a damaged file in the store is a miss (Triton compiles), with a warning
    import redis

    r = redis.Redis.from_url(redis_server.url)
    prefix = url.split("prefix=")[1]
    (grp_key,) = [k for k in r.keys(f"{prefix}:triton/{keys[2]}/__grp__*")]
    r.setrange(grp_key, 30, b"\xff")
    d = child("compile", "2", env={"TRITON_CACHE_DIR": str(tmp_path / "d"), **remote})
    assert [x["hit"] for x in d["compiled"]] == [False], d
    assert any("is damaged" in w for w in d["warnings"]), d["warnings"]
