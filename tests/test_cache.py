"""Restoring bundles into a Triton cache: atomic, concurrent, SIGKILL-safe,
policy on mismatched kernels, and cleaning up litter. Real processes and
real kernels compiled by Triton for cuda:90."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _trees import litter as _litter, tree as _tree

import bundle_kernels
import pyruntime
from pyruntime.bundle import model as b_model, restore as cache, collect as bundler
from pyruntime.bundle.model import TritonBundle
from pyruntime.bundle.collect import collect_dir
from pyruntime.bundle.compat import installed_triton_abi
from pyruntime.bundle.format import load_bundle
from pyruntime.bundle.rules import restore_tmp_name
from pyruntime.errors import BundleCompatibilityError
from pyruntime.hashing import hash_dir

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    return bundle_kernels.shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(kernel_cache) -> TritonBundle:
    return collect_dir(kernel_cache[0])


@pytest.fixture(scope="module")
def bundle_file(bundle, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("bundles") / "kernels.prtb")
    bundle.save(path)
    return path


def _expected_files(bundle: TritonBundle, cache_dir: str) -> dict[str, bytes]:
    """What a restore into cache_dir must produce, file by file."""
    out = {}
    for k in bundle.kernel_artifacts:
        kdir = os.path.abspath(os.path.join(cache_dir, k.kernel_hash))
        for a in k.artifacts:
            data = bytes(a.payload)
            if a.filename.endswith(".json"):
                data = data.replace(b"[REPLACE]", json.dumps(kdir)[1:-1].encode())
            out[f"{k.kernel_hash}/{a.filename}"] = data
    return out


# --------------------------------------------------------------------------
# one restorer


TRICKY_NAMES = ["k.cubin", "k.json", "a.b.cubin", ".cubin", "...hsaco", "x.cubinx", "cubin", "k.cubin.cubin",
                "__grp__k.json", "z.spv", "y.zebin", "w.hsaco", "v.ptx", "u. cubin", " .cubin"]


def test_restored_kernel_names_match_kernel_names_whatever_is_restored(tmp_path):
    kernels = [b_model.TritonKernelArtifacts(f"K{i}", 0, [b_model.TritonKernelArtifact(n, b"x") for n in names])
               for i, names in enumerate([TRICKY_NAMES[:5], TRICKY_NAMES[5:11], TRICKY_NAMES[11:], []])]
    b = TritonBundle(kernels)
    result = b.restore(str(tmp_path / "all"))
    want = [n for k in kernels for n in k.kernel_names()]
    assert want == ["k", "a.b", "k.cubin", "z", "y", "w", " "]
    assert result.kernel_names == want
    # some kernels already there: only the restored ones' names, in order
    part = tmp_path / "part"
    TritonBundle([kernels[1]]).restore(str(part))
    result = b.restore(str(part))
    assert result.restored == ["K0", "K2", "K3"]
    assert result.kernel_names == [n for k in (kernels[0], kernels[2]) for n in k.kernel_names()]


def test_restore_into_an_empty_cache(bundle, tmp_path):
    root = str(tmp_path / "cache")
    result = bundle.restore(root)
    assert sorted(result.restored) == sorted(k.kernel_hash for k in bundle.kernel_artifacts)
    assert result.existing == [] and result.incompatible == {}
    assert sorted(result.kernel_names) == sorted(bundle.kernel_names())
    assert result.files_written == sum(len(k.artifacts) for k in bundle.kernel_artifacts)
    assert _tree(root) == _expected_files(bundle, root)
    assert _litter(root) == []
    # the restored cache bundles back to the same kernels
    assert collect_dir(root) == bundle


def test_restore_round_trips_the_directory_digest(tmp_path):
    """Compile, bundle, wipe, restore at the same path: byte-identical cache."""
    root = str(tmp_path / "cache")
    bundle_kernels.compile_samples(root, bundle_kernels.SAMPLES[:2])
    before = hash_dir(root)
    b = collect_dir(root)
    import shutil

    shutil.rmtree(root)
    b.restore(root)
    assert hash_dir(root) == before


def test_restored_kernels_are_cache_hits_for_triton(kernel_cache, bundle_file, tmp_path, monkeypatch):
    """Triton finds the restored kernels (its __grp__ child paths point at the
    new directory) and loads them instead of compiling: no file is replaced."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    root = str(tmp_path / "relocated")
    load_bundle(bundle_file).restore(root)
    inodes = {p: os.stat(os.path.join(root, p)).st_ino for p in _tree(root)}
    monkeypatch.setenv("TRITON_CACHE_DIR", root)
    for fn, sig, consts in bundle_kernels.SAMPLES:
        k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))
        kdir = next(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, f"{fn.__name__}.cubin")))
        with open(os.path.join(root, kdir, f"{fn.__name__}.cubin"), "rb") as f:
            assert k.asm["cubin"] == f.read()
    assert {p: os.stat(os.path.join(root, p)).st_ino for p in _tree(root)} == inodes
    assert _litter(root) == []


def test_second_restore_changes_nothing(bundle, tmp_path):
    root = str(tmp_path / "cache")
    bundle.restore(root)
    stats = {p: os.stat(os.path.join(root, p)) for p in _tree(root)}
    result = bundle.restore(root)
    assert result.restored == [] and sorted(result.existing) == sorted(k.kernel_hash for k in bundle.kernel_artifacts)
    assert result.kernel_names == []
    assert {p: (s.st_ino, s.st_mtime_ns) for p, s in stats.items()} == {
        p: (os.stat(os.path.join(root, p)).st_ino, os.stat(os.path.join(root, p)).st_mtime_ns) for p in stats}


def test_existing_kernel_dirs_are_kept_and_empty_ones_replaced(bundle, tmp_path):
    root = tmp_path / "cache"
    k0, k1 = bundle.kernel_artifacts[0].kernel_hash, bundle.kernel_artifacts[1].kernel_hash
    (root / k0).mkdir(parents=True)
    (root / k0 / "mine.txt").write_text("local")  # non-empty: left alone
    (root / k1).mkdir()  # empty: filled
    result = bundle.restore(root)
    assert k0 in result.existing and k1 in result.restored
    assert os.listdir(root / k0) == ["mine.txt"]
    assert sorted(os.listdir(root / k1)) == sorted(a.filename for a in bundle.kernel_artifacts[1].artifacts)


def test_restore_to_an_awkward_directory_name_keeps_json_valid(bundle, tmp_path):
    root = tmp_path / 'we"ird\\ dir é'
    bundle.restore(root)
    for k in bundle.kernel_artifacts:
        grp = next(a.filename for a in k.artifacts if a.filename.startswith("__grp__"))
        children = json.loads((root / k.kernel_hash / grp).read_text())["child_paths"]
        for name, path in children.items():
            assert path == os.path.join(str(root), k.kernel_hash, name) and os.path.isfile(path)


def test_restore_defaults_to_the_triton_cache_dir(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "tcd"))
    bundle.restore()
    assert sorted(os.listdir(tmp_path / "tcd")) == sorted(k.kernel_hash for k in bundle.kernel_artifacts)


def test_fsync_restore(bundle, tmp_path, monkeypatch):
    root = str(tmp_path / "cache")
    assert len(bundle.restore(root, fsync=True).restored) == len(bundle)
    assert _tree(root) == _expected_files(bundle, root)
    monkeypatch.setenv("PYRUNTIME_FSYNC", "1")
    root2 = str(tmp_path / "cache2")
    assert len(bundle.restore(root2).restored) == len(bundle)


def test_a_failure_mid_kernel_leaves_no_partial_directory(bundle, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    victim = bundle.kernel_artifacts[1].kernel_hash
    seen = []

    def hook(kernel_hash, filename):
        seen.append(kernel_hash)
        if kernel_hash == victim and seen.count(victim) == 3:
            raise OSError(28, "No space left on device (test)")

    monkeypatch.setattr(cache, "_after_file_hook", hook)
    with pytest.raises(OSError, match="No space left"):
        bundle.restore(root)
    assert sorted(os.listdir(root)) == [bundle.kernel_artifacts[0].kernel_hash]  # first kernel complete, no tmp
    monkeypatch.setattr(cache, "_after_file_hook", None)
    bundle.restore(root)
    assert _tree(str(root)) == _expected_files(bundle, str(root))


# --------------------------------------------------------------------------
# mismatched kernels


def _aged(bundle: TritonBundle, n: int, **changes) -> TritonBundle:
    kernels = [dataclasses.replace(k, **changes) if i < n else k for i, k in enumerate(bundle.kernel_artifacts)]
    return dataclasses.replace(bundle, kernel_artifacts=kernels)


def test_other_triton_version_warns_and_skips_by_default(bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("PYRUNTIME_BUNDLE_ON_MISMATCH", raising=False)
    old = _aged(bundle, 2, triton_version="3.1.0")
    root = tmp_path / "cache"
    with pytest.warns(RuntimeWarning, match=r"2 bundled kernel\(s\) do not fit.*built with triton 3.1.0, installed is 3.9.0"):
        result = old.restore(root)
    assert sorted(result.incompatible) == sorted(k.kernel_hash for k in bundle.kernel_artifacts[:2])
    assert sorted(os.listdir(root)) == sorted(k.kernel_hash for k in bundle.kernel_artifacts[2:])


def test_mismatch_policy_error_writes_nothing(bundle, tmp_path, monkeypatch):
    old = _aged(bundle, 1, triton_version="2.0.0")
    with pytest.raises(BundleCompatibilityError, match="nothing was written"):
        old.restore(tmp_path / "a", on_mismatch="error")
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("PYRUNTIME_BUNDLE_ON_MISMATCH", "error")
    with pytest.raises(BundleCompatibilityError):
        old.restore(tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_mismatch_policy_force_writes_everything(bundle, tmp_path):
    old = _aged(bundle, 2, triton_version="3.1.0")
    result = old.restore(tmp_path / "c", on_mismatch="force")
    assert len(result.restored) == len(bundle) and result.incompatible == {}


def test_target_check_only_when_a_target_is_given(bundle, tmp_path):
    assert len(bundle.restore(tmp_path / "a", target="cuda:90", on_mismatch="error").restored) == len(bundle)
    with pytest.raises(BundleCompatibilityError, match="built for cuda:90, expected cuda:80"):
        bundle.restore(tmp_path / "b", target="cuda:80", on_mismatch="error")
    with pytest.warns(RuntimeWarning):
        result = bundle.restore(tmp_path / "c", target="hip:gfx942")
    assert result.restored == [] and len(result.incompatible) == len(bundle)


def test_versions_compare_without_local_part(bundle, tmp_path):
    local = _aged(bundle, len(bundle), triton_version="3.9.0+git1234")
    assert len(local.restore(tmp_path / "a", on_mismatch="error").restored) == len(bundle)
    unknown = _aged(bundle, len(bundle), triton_version=None)
    unknown = dataclasses.replace(unknown, triton_version=None)
    assert len(unknown.restore(tmp_path / "b", on_mismatch="error").restored) == len(bundle)


def test_bad_policy_value(bundle, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="on_mismatch"):
        bundle.restore(tmp_path, on_mismatch="sometimes")
    monkeypatch.setenv("PYRUNTIME_BUNDLE_ON_MISMATCH", "maybe")
    with pytest.raises(ValueError, match="PYRUNTIME_BUNDLE_ON_MISMATCH"):
        bundle.restore(tmp_path)


# --------------------------------------------------------------------------
# a bundle collected under another Python (its Triton wheel, so its cache keys, differ)

OTHER_ABI = "cpython-312-x86_64-linux-gnu" if installed_triton_abi() != "cpython-312-x86_64-linux-gnu" \
    else "cpython-311-x86_64-linux-gnu"


@pytest.fixture
def foreign_file(kernel_cache, tmp_path, monkeypatch) -> str:
    """A real bundle file collected while the ABI probe said OTHER_ABI,
    i.e. as a Python of that ABI would have written it."""
    with monkeypatch.context() as m:
        m.setattr(bundler, "installed_triton_abi", lambda: OTHER_ABI)
        b = collect_dir(kernel_cache[0])
    assert b.triton_abi == OTHER_ABI
    path = str(tmp_path / "foreign.prtb")
    b.save(path)
    return path


def test_other_python_abi_warns_and_skips_by_default(foreign_file, bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("PYRUNTIME_BUNDLE_ON_MISMATCH", raising=False)
    foreign = load_bundle(foreign_file)
    assert foreign.triton_abi == OTHER_ABI
    root = tmp_path / "cache"
    with pytest.warns(RuntimeWarning) as caught:
        result = foreign.restore(root)
    (w,) = caught
    text = str(w.message)
    assert f"{len(bundle)} bundled kernel(s) were collected under Python ABI {OTHER_ABI}" in text
    assert f"this interpreter is {installed_triton_abi()}" in text
    assert "depend on the exact Triton wheel, which differs per Python version" in text
    assert "rebuild the bundle under the target's Python" in text and text.endswith("skipped them")
    assert result.message == text
    assert result.restored == [] and sorted(result.incompatible) == sorted(k.kernel_hash for k in bundle.kernel_artifacts)
    assert all(OTHER_ABI in r for r in result.incompatible.values())
    assert not root.exists()


def test_other_python_abi_with_policy_error_writes_nothing(foreign_file, tmp_path, monkeypatch):
    foreign = load_bundle(foreign_file)
    with pytest.raises(BundleCompatibilityError, match=rf"Python ABI {OTHER_ABI}.*rebuild the bundle.*nothing was written"):
        foreign.restore(tmp_path / "a", on_mismatch="error")
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("PYRUNTIME_BUNDLE_ON_MISMATCH", "error")
    with pytest.raises(BundleCompatibilityError, match="differs per Python version"):
        foreign.restore(tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_other_python_abi_with_policy_force_writes_everything(foreign_file, bundle, tmp_path):
    foreign = load_bundle(foreign_file)
    root = tmp_path / "c"
    result = foreign.restore(root, on_mismatch="force")
    assert len(result.restored) == len(bundle) and result.incompatible == {} and result.message is None
    assert _tree(str(root)) == _expected_files(bundle, str(root))


def test_a_bundle_without_an_abi_still_restores(bundle, tmp_path):
    """Bundles written before triton_abi was recorded have no such header
    key: the ABI is unknown and not checked, even under the error policy."""
    path = tmp_path / "old.prtb"
    dataclasses.replace(bundle, triton_abi=None).save(path)
    header = json.loads(pyruntime.packing.unpack(path.read_bytes())[0][1])
    assert "triton_abi" not in header
    old = load_bundle(path)
    assert old.triton_abi is None
    root = tmp_path / "cache"
    result = old.restore(root, on_mismatch="error")
    assert len(result.restored) == len(bundle) and result.message is None
    assert _tree(str(root)) == _expected_files(bundle, str(root))


def test_same_abi_restores_under_the_error_policy(bundle_file, bundle, tmp_path):
    b = load_bundle(bundle_file)
    assert b.triton_abi == installed_triton_abi()
    assert len(b.restore(tmp_path / "a", on_mismatch="error").restored) == len(bundle)


def test_version_and_abi_mismatches_are_both_reported(foreign_file, bundle, tmp_path):
    foreign = _aged(load_bundle(foreign_file), 1, triton_version="3.1.0")
    with pytest.warns(RuntimeWarning) as caught:
        result = foreign.restore(tmp_path / "a")
    text = str(caught[0].message)
    first = bundle.kernel_artifacts[0].kernel_hash
    assert f"{len(bundle) - 1} bundled kernel(s) were collected under Python ABI {OTHER_ABI}" in text
    assert f"1 bundled kernel(s) do not fit this installation ({first}: built with triton 3.1.0" in text
    assert result.incompatible[first].startswith("built with triton 3.1.0")


# --------------------------------------------------------------------------
# many restorers at once (real processes)

_RESTORER = textwrap.dedent("""
    import json, os, sys, time
    from pyruntime.bundle.format import load_bundle
    bundle_file, root, go = sys.argv[1:4]
    b = load_bundle(bundle_file)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    r = b.restore(root)
    print(json.dumps({"restored": r.restored, "existing": r.existing}), flush=True)
""")


@pytest.mark.timeout(120)
def test_many_processes_restore_the_same_bundle_at_once(bundle, bundle_file, tmp_path):
    root = str(tmp_path / "cache")
    go = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, "-c", _RESTORER, bundle_file, root, go],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        open(go, "w").close()  # all start together
        results = []
        for p in procs:
            out, err = p.communicate(timeout=100)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    hashes = sorted(k.kernel_hash for k in bundle.kernel_artifacts)
    # each kernel was put in place by exactly one process; every process
    # accounts for every kernel
    restored = sorted(h for r in results for h in r["restored"])
    assert restored == hashes
    for r in results:
        assert sorted(r["restored"] + r["existing"]) == hashes
    assert _tree(root) == _expected_files(bundle, root)
    assert _litter(root) == []


# --------------------------------------------------------------------------
# SIGKILL in the middle of a restore

_KILLED = textwrap.dedent("""
    import os, sys, time
    from pyruntime.bundle import rules as b_rules, model as b_model, compat as b_compat, format as bundle_format, restore as cache, collect as bundler
    from pyruntime.bundle.format import load_bundle
    bundle_file, root = sys.argv[1:3]
    b = load_bundle(bundle_file)
    second = b.kernel_artifacts[1].kernel_hash
    def hook(kernel_hash, filename):
        if kernel_hash == second:  # first kernel done, second half written
            print("ready", flush=True)
            time.sleep(300)
    cache._after_file_hook = hook
    b.restore(root)
""")


def _kill_mid_restore(bundle_file: str, root: str) -> int:
    p = subprocess.Popen([sys.executable, "-c", _KILLED, bundle_file, root],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read()
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.pid


def _assert_killed_state(bundle: TritonBundle, root: str, pid: int) -> None:
    first, second = bundle.kernel_artifacts[0].kernel_hash, bundle.kernel_artifacts[1].kernel_hash
    litter = _litter(root)
    assert len(litter) == 1 and litter[0].startswith(f"tmp.pid_{pid}_")
    assert os.listdir(os.path.join(root, litter[0]))  # the half-written kernel is in there
    # no partial kernel directory: only the complete first kernel is visible
    assert sorted(n for n in os.listdir(root) if not n.startswith("tmp.")) == [first]
    assert not os.path.exists(os.path.join(root, second))
    want = {p: d for p, d in _expected_files(bundle, root).items() if p.startswith(first + "/")}
    assert {p: d for p, d in _tree(root).items() if not p.startswith("tmp.")} == want


@pytest.mark.timeout(120)
def test_sigkill_mid_restore_then_next_restore_cleans_up(bundle, bundle_file, tmp_path):
    root = str(tmp_path / "cache")
    pid = _kill_mid_restore(bundle_file, root)
    _assert_killed_state(bundle, root, pid)
    result = load_bundle(bundle_file).restore(root)
    assert len(result.stale_removed) == 1 and f"tmp.pid_{pid}_" in result.stale_removed[0]
    assert sorted(result.existing) == [bundle.kernel_artifacts[0].kernel_hash]
    assert _litter(root) == []
    assert _tree(root) == _expected_files(bundle, root)


@pytest.mark.timeout(120)
def test_sigkill_mid_restore_then_cache_clean(bundle, bundle_file, tmp_path):
    root = str(tmp_path / "cache")
    pid = _kill_mid_restore(bundle_file, root)
    _assert_killed_state(bundle, root, pid)
    out = subprocess.run([sys.executable, "-m", "pyruntime", "cache", "clean", root],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"tmp.pid_{pid}_" in out.stdout and "removed 1 tmp.* entries" in out.stdout
    assert _litter(root) == []
    assert sorted(os.listdir(root)) == [bundle.kernel_artifacts[0].kernel_hash]


# --------------------------------------------------------------------------
# clean


def test_clean_rules(tmp_path):
    """Litter goes by lock or age, never by pid: a restore's directory
    whose writer is gone (unlocked) at once, Triton's (never locked) by age
    only, whatever pid its name holds; a locked one never."""
    root = tmp_path / "cache"
    kernel = root / "KERNEL"
    kernel.mkdir(parents=True)
    (kernel / "k.cubin").write_bytes(b"x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    locked = root / restore_tmp_name(dead_pid, "0" * 12, 0)  # a running restore (its pid means nothing)
    live = [
        locked,
        root / f"tmp.pid_{dead_pid}_abc",  # Triton's, young: its pid says nothing
        kernel / f"tmp.pid_{dead_pid}_0123",  # Triton's litter inside a kernel dir, young
        root / "tmp.young-uuid",  # no pid, recent
    ]
    stale = [
        root / restore_tmp_name(os.getpid(), "1" * 12, 3),  # a restore's, unlocked: its writer is gone
        kernel / f"tmp.pid_{os.getpid()}_4567",  # Triton's, old (its pid is alive)
        root / "tmp.old-uuid",  # no pid, old
    ]
    for d in live + stale:
        d.mkdir()
        (d / "f").write_text("partial")
    old_file = kernel / "k.cubin.tmp.pid_1_x"  # older Triton's in-place litter
    old_file.write_bytes(b"partial")
    stale.append(old_file)
    old = time.time() - 2 * cache.DEFAULT_MAX_AGE_S
    for p in (root / "tmp.old-uuid", kernel / f"tmp.pid_{os.getpid()}_4567", old_file):
        os.utime(p, (old, old))
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.utime(locked, (old, old))  # even old: the lock says it is in use

        dry = cache.clean(root, dry_run=True)
        assert sorted(dry.removed) == sorted(map(str, stale))
        assert all(d.exists() for d in stale)
        result = cache.clean(root)
        assert sorted(result.removed) == sorted(map(str, stale)) and sorted(result.kept) == sorted(map(str, live))
        assert not any(d.exists() for d in stale) and all(d.exists() for d in live)
        assert (kernel / "k.cubin").exists()
        result = cache.clean(root, everything=True)  # all but the locked one
        assert sorted(result.removed) == sorted(map(str, live[1:])) and result.kept == [str(locked)]
    finally:
        os.close(fd)
    assert cache.clean(root, max_age=None).removed == [str(locked)] and _litter(str(root)) == []


def test_restore_leaves_live_restorers_alone(bundle, tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    mine = root / f"tmp.pid_{os.getpid()}_inflight"
    mine.mkdir()
    (root / "tmp.no-pid").mkdir()
    result = bundle.restore(root)
    assert result.stale_removed == []
    assert mine.exists() and (root / "tmp.no-pid").exists()
