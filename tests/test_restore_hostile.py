"""Hostile cache states for restore and `cache clean`, with real files,
processes, signals and PID namespaces, on both backends.

1. Kernel paths held by something that is not a kernel directory (a file,
   FIFO, socket, device, symlink dangling or pointing anywhere): never
   counted as present; replaced (default), refused or left and reported,
   per ``on_conflict``; a replace never follows a symlink, never shows a
   partial kernel, and concurrent restorers never lose a kernel.
2. One rule for names (rules.is_litter): what the reader accepts, the
   cleaner never removes, and the other way round.
3. Litter is decided by the writer's flock or by age, never by a pid: a
   restorer in another PID namespace keeps its tmp directory; once it is
   killed, the next clean removes it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _trees import litter as _litter, tree as _tree

from pyruntime import core, packing
from pyruntime.bundle import format as bundle_format, restore as cache, rules
from pyruntime.bundle.collect import collect_dir
from pyruntime.bundle.format import load_bundle
from pyruntime.bundle.model import TritonBundle, TritonKernelArtifact, TritonKernelArtifacts
from pyruntime.cli import main
from pyruntime.core import twin
from pyruntime.core.twin import (
    KERNEL_BLOCKED,
    KERNEL_PRESENT,
    KERNEL_RENAMED,
    KERNEL_REPLACED,
    table_of,
)
from pyruntime.errors import BundleFormatError, KernelPathConflictError
from pyruntime.hashing import hash_dir

BACKENDS = core.backends()
NAMES = [b.name for b in BACKENDS]


@pytest.fixture
def restorer(backend, monkeypatch):
    """Restores in this process go through ``backend``."""
    monkeypatch.setattr(core, "backend", backend)
    monkeypatch.delenv("PYRUNTIME_RESTORE_ON_CONFLICT", raising=False)
    return backend


def _env(backend_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYRUNTIME_PURE_PYTHON", "PYRUNTIME_RESTORE_ON_CONFLICT")}
    if backend_name == "python":
        env["PYRUNTIME_PURE_PYTHON"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _bundle(n: int = 3, prefix: str = "KERN", files: int = 3, size: int = 300) -> TritonBundle:
    """Synthetic kernels (no Triton needed): a .json with the [REPLACE]
    sentinel, a few binary files."""
    kernels = []
    for k in range(n):
        h = f"{prefix}{k:04d}"
        arts = [TritonKernelArtifact(f"__grp__k{k}.json",
                                     json.dumps({"child_paths": {f"k{k}.cubin": f"[REPLACE]/k{k}.cubin"}}).encode())]
        arts += [TritonKernelArtifact(f"k{k}.f{j}.ptx", bytes((k * 31 + j + i) % 251 for i in range(size)))
                 for j in range(files - 1)]
        arts.append(TritonKernelArtifact(f"k{k}.cubin", b"\x7fELF" + bytes([k % 256]) * size))
        kernels.append(TritonKernelArtifacts(h, 0, arts))
    return TritonBundle(kernels, triton_version=None)


def _want(bundle: TritonBundle, root) -> dict[str, bytes]:
    out = {}
    for k in bundle.kernel_artifacts:
        kdir = os.path.abspath(os.path.join(str(root), k.kernel_hash))
        for a in k.artifacts:
            data = bytes(a.payload)
            if a.filename.endswith(".json"):
                data = data.replace(b"[REPLACE]", json.dumps(kdir)[1:-1].encode())
            out[f"{k.kernel_hash}/{a.filename}"] = data
    return out


def _hashes(bundle: TritonBundle) -> list[str]:
    return [k.kernel_hash for k in bundle.kernel_artifacts]


def _kernel_tree(root) -> dict[str, bytes]:
    """The files of real kernel directories under root (never through a
    symlink, never opening anything but regular files)."""
    out = {}
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not rules.is_kernel_hash(name) or not stat.S_ISDIR(os.lstat(path).st_mode):
            continue
        for f in os.listdir(path):
            p = os.path.join(path, f)
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as fh:
                    out[f"{name}/{f}"] = fh.read()
    return out


# --------------------------------------------------------------------------
# 1. kernel paths held by non-directories

# kind -> a word the description must hold
KINDS = {
    "regular file": "a regular file",
    "empty file": "a regular file",
    "fifo": "a FIFO",
    "socket": "a socket",
    "char device": "a character device",
    "dangling symlink": "a symlink to",
    "symlink to an empty dir": "a symlink to",
    "symlink to a file": "a symlink to",
    "symlink to a dir outside": "a symlink to",
    "symlink to a fifo": "a symlink to",
    "symlink to a sibling kernel": "a symlink to",
    "symlink loop": "a symlink to",
}


def _make_blocker(kind: str, path: str, outside: str, root: str) -> None:
    """Put a ``kind`` at ``path``; what it points at lives in ``outside``
    (regular files only: the test reads that tree back) or in the cache."""
    fifos = os.path.join(os.path.dirname(outside), "fifos")
    os.makedirs(fifos, exist_ok=True)
    if kind == "regular file":
        with open(path, "wb") as f:
            f.write(b"not a kernel")
    elif kind == "empty file":
        open(path, "wb").close()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)
    elif kind == "char device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("mknod needs root")
    elif kind == "dangling symlink":
        os.symlink(os.path.join(outside, "nowhere"), path)
    elif kind == "symlink to an empty dir":
        os.mkdir(os.path.join(root, "emptydir"))
        os.symlink("emptydir", path)
    elif kind == "symlink to a file":
        with open(os.path.join(outside, "target"), "wb") as f:
            f.write(b"outside")
        os.symlink(os.path.join(outside, "target"), path)
    elif kind == "symlink to a dir outside":
        evil = os.path.join(outside, "kernel")
        os.mkdir(evil)
        for name in ("k0.cubin", "__grp__k0.json", "evil.so"):
            with open(os.path.join(evil, name), "wb") as f:
                f.write(b"evil " + name.encode())
        os.symlink(evil, path)
    elif kind == "symlink to a fifo":
        os.mkfifo(os.path.join(fifos, "f"))
        os.symlink(os.path.join(fifos, "f"), path)
    elif kind == "symlink to a sibling kernel":
        os.symlink("KERN0001", path)
    elif kind == "symlink loop":
        os.symlink(os.path.basename(path), path)
    else:
        raise AssertionError(kind)


def _setup(tmp_path, kind: str, bundle: TritonBundle) -> tuple[str, str, str, os.stat_result]:
    root, outside = str(tmp_path / "cache"), str(tmp_path / "outside")
    os.mkdir(root)
    os.mkdir(outside)
    h = bundle.kernel_artifacts[0].kernel_hash
    _make_blocker(kind, os.path.join(root, h), outside, root)
    return root, outside, h, os.lstat(os.path.join(root, h))


@pytest.mark.timeout(60)  # a FIFO that is opened would hang
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_blocked_kernel_path_is_replaced_by_default(restorer, kind, tmp_path):
    b = _bundle()
    root, outside, h, _ = _setup(tmp_path, kind, b)
    before = _tree(outside)
    result = b.restore(root)
    assert sorted(result.restored) == _hashes(b) and result.existing == [] and result.blocked == {}
    assert list(result.replaced) == [h] and KINDS[kind] in result.replaced[h]
    assert stat.S_ISDIR(os.lstat(os.path.join(root, h)).st_mode)  # a real directory now
    assert _kernel_tree(root) == _want(b, root)
    assert _tree(outside) == before  # nothing outside was followed into, written or removed
    assert _litter(root) == []
    again = b.restore(root)  # now a kernel like any other
    assert sorted(again.existing) == _hashes(b) and again.replaced == {} and again.blocked == {}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "symlink to a dir outside", "dangling symlink", "socket"])
def test_skip_leaves_the_blocker_and_reports_it_every_time(restorer, kind, tmp_path):
    b = _bundle()
    root, outside, h, st0 = _setup(tmp_path, kind, b)
    for _ in range(2):  # never counted as present, now or later
        with pytest.warns(RuntimeWarning, match=f"{h}: {KINDS[kind]}"):
            result = b.restore(root, on_conflict="skip")
        assert list(result.blocked) == [h] and KINDS[kind] in result.blocked[h]
        assert h not in result.existing and h not in result.restored and result.replaced == {}
        st = os.lstat(os.path.join(root, h))
        assert (st.st_ino, stat.S_IFMT(st.st_mode)) == (st0.st_ino, stat.S_IFMT(st0.st_mode))
    assert sorted(result.existing) == sorted(set(_hashes(b)) - {h})
    result = b.restore(root)  # the default replaces it later
    assert result.restored == [h] and list(result.replaced) == [h]
    assert _kernel_tree(root) == _want(b, root) and _litter(root) == []


@pytest.mark.parametrize("kind", ["regular file", "symlink to a dir outside"])
def test_error_refuses_before_anything_is_written(restorer, kind, tmp_path):
    b = _bundle()
    root, outside, h, st0 = _setup(tmp_path, kind, b)
    with pytest.raises(KernelPathConflictError, match=f"{h}: {KINDS[kind]}.*nothing was written") as exc:
        b.restore(root, on_conflict="error")
    assert list(exc.value.blocked) == [h] and exc.value.result is None
    assert sorted(os.listdir(root)) == [h] and os.lstat(os.path.join(root, h)).st_ino == st0.st_ino


def test_the_environment_sets_the_default_and_the_argument_wins(restorer, tmp_path, monkeypatch):
    b = _bundle()
    root, _, h, _ = _setup(tmp_path, "regular file", b)
    monkeypatch.setenv("PYRUNTIME_RESTORE_ON_CONFLICT", "error")
    with pytest.raises(KernelPathConflictError):
        b.restore(root)
    monkeypatch.setenv("PYRUNTIME_RESTORE_ON_CONFLICT", " Skip ")
    with pytest.warns(RuntimeWarning):
        assert list(b.restore(root).blocked) == [h]
    monkeypatch.setenv("PYRUNTIME_RESTORE_ON_CONFLICT", "sideways")
    with pytest.raises(ValueError, match="PYRUNTIME_RESTORE_ON_CONFLICT='sideways'"):
        b.restore(root)
    with pytest.raises(ValueError, match="on_conflict must be"):
        b.restore(root, on_conflict="x" * 1000)
    assert list(b.restore(root, on_conflict="replace").replaced) == [h]


# -- the writer itself (no listing in front of it), both backends ---------

def _writer_case(root: str, outside: str) -> list[tuple[str, str, list[tuple[str, bytes]]]]:
    """Six kernels whose final names hold: nothing, an empty directory, a
    kernel (files), a regular file, a symlink to a directory with files
    outside, a FIFO."""
    kernels = [(f"tmp.w{k}", f"K{k}", [(f"f{i}", bytes([k, i]) * 100) for i in range(3)]) for k in range(6)]
    os.mkdir(os.path.join(root, "K1"))
    os.mkdir(os.path.join(root, "K2"))
    with open(os.path.join(root, "K2", "theirs"), "wb") as f:
        f.write(b"first")
    with open(os.path.join(root, "K3"), "wb") as f:
        f.write(b"file")
    evil = os.path.join(outside, "evil")
    os.mkdir(evil)
    with open(os.path.join(evil, "f0"), "wb") as f:
        f.write(b"evil")
    os.symlink(evil, os.path.join(root, "K4"))
    os.mkfifo(os.path.join(root, "K5"))
    return kernels


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nthreads", [1, 4])
def test_the_writer_replaces_or_reports_non_directories_on_both_backends(tmp_path, nthreads):
    outcomes, trees = {}, {}
    for b in BACKENDS:
        for replace in (False, True):
            base = tmp_path / f"{b.name}-{replace}"
            root, outside = str(base / "cache"), str(base / "outside")
            os.makedirs(root)
            os.makedirs(outside)
            kernels = _writer_case(root, outside)
            table, jobs = table_of(kernels)
            done = b.write_kernels(root, table, jobs, nthreads, False, replace=replace)
            outcomes[b.name, replace] = [(w.outcome, w.err_no) for w in done]
            for (_, _, files), w in zip(kernels, done):
                assert w.nbytes == (sum(len(d) for _, d in files) if w.outcome in (1, 2) else 0)
            assert _litter(root) == []
            assert _tree(outside) == {"evil/f0": b"evil"}
            kinds = {n: stat.S_IFMT(os.lstat(os.path.join(root, n)).st_mode) for n in os.listdir(root)}
            trees[b.name, replace] = (_kernel_tree(root), kinds)
    for name in NAMES:
        assert outcomes[name, False] == [(KERNEL_RENAMED, 0), (KERNEL_RENAMED, 0), (KERNEL_PRESENT, 0),
                                         (KERNEL_BLOCKED, 0), (KERNEL_BLOCKED, 0), (KERNEL_BLOCKED, 0)]
        assert outcomes[name, True] == [(KERNEL_RENAMED, 0), (KERNEL_RENAMED, 0), (KERNEL_PRESENT, 0),
                                        (KERNEL_REPLACED, 0), (KERNEL_REPLACED, 0), (KERNEL_REPLACED, 0)]
        tree, kinds = trees[name, True]
        assert set(kinds.values()) == {stat.S_IFDIR}
        assert tree["K2/theirs"] == b"first" and "K2/f0" not in tree  # the first kernel stays
        assert all(tree[f"K{k}/f{i}"] == bytes([k, i]) * 100 for k in (0, 1, 3, 4, 5) for i in range(3))
        tree, kinds = trees[name, False]
        assert [kinds[f"K{k}"] for k in (3, 4, 5)] == [stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO]
    assert len({tuple(v) for k, v in outcomes.items()}) == 2  # the same on both backends
    assert len({repr(trees[n, r]) for n in NAMES for r in (True,)}) == 1


_UNREMOVABLE = textwrap.dedent("""
    set -e
    mount --bind "$1" "$2/$3"
    shift 3
    exec "$@"
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", NAMES)
def test_a_blocker_that_cannot_be_removed_is_reported_and_exits_3(which, tmp_path):
    """A file bind-mounted onto a kernel's path (unlink: EBUSY) in a mount
    namespace of the restorer's own: the other kernels are restored, that
    one is reported per kernel, and `bundle restore` exits 3."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root")
    b = _bundle()
    bundle_file = str(tmp_path / "b.prtb")
    b.save(bundle_file)
    root = tmp_path / "cache"
    root.mkdir()
    h = b.kernel_artifacts[1].kernel_hash
    (root / h).write_bytes(b"mount point")
    (tmp_path / "src").write_bytes(b"mounted")
    cmd = ["unshare", "--mount", "sh", "-c", _UNREMOVABLE, "sh", str(tmp_path / "src"), str(root), h,
           sys.executable, "-m", "pyruntime", "bundle", "restore", bundle_file, "--cache-dir", str(root)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=_env(which))
    if "mount" in out.stderr and out.returncode not in (0, 3):
        pytest.skip(f"cannot bind-mount here: {out.stderr.strip()}")
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"blocked {h}: a regular file; cannot remove it: {os.strerror(errno.EBUSY)}" in out.stderr
    assert "not restored" in out.stderr and "1 blocked" in out.stdout
    assert "restored 2 kernels" in out.stdout
    assert (root / h).read_bytes() == b"mount point" and _litter(str(root)) == []
    want = {p: d for p, d in _want(b, root).items() if not p.startswith(h)}
    assert _kernel_tree(str(root)) == want


# -- many restorers at once, onto blockers ----------------------------------

_RESTORER = textwrap.dedent("""
    import json, os, sys, time, warnings
    from pyruntime.bundle.format import load_bundle
    b = load_bundle(sys.argv[1])
    root, go = sys.argv[2], sys.argv[3]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = b.restore(root)
    print(json.dumps({"restored": r.restored, "existing": r.existing, "replaced": sorted(r.replaced),
                      "blocked": r.blocked}), flush=True)
""")

_BLOCKER_CYCLE = ["regular file", "symlink to a dir outside", "dangling symlink", "fifo", "empty file"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", NAMES)
def test_concurrent_restorers_onto_blockers_never_lose_and_never_show_a_partial_kernel(which, tmp_path):
    b = _bundle(n=24, files=6, size=2000)
    bundle_file = str(tmp_path / "b.prtb")
    b.save(bundle_file)
    root, outside = str(tmp_path / "cache"), str(tmp_path / "outside")
    os.mkdir(root)
    os.mkdir(outside)
    hashes = _hashes(b)
    for i, h in enumerate(hashes):
        sub = os.path.join(outside, h)
        os.mkdir(sub)
        _make_blocker(_BLOCKER_CYCLE[i % len(_BLOCKER_CYCLE)], os.path.join(root, h), sub, root)
    before = _tree(outside)
    want = _want(b, root)
    complete = {h: sorted(p.split("/", 1)[1] for p in want if p.startswith(h + "/")) for h in hashes}
    seen_partial: list[tuple[str, list[str]]] = []
    stop = threading.Event()

    def reader():  # what a Triton process would see: any directory there is complete
        while not stop.is_set():
            for h in hashes:
                path = os.path.join(root, h)
                try:
                    if stat.S_ISDIR(os.lstat(path).st_mode):
                        got = sorted(os.listdir(path))
                        if got != complete[h]:
                            seen_partial.append((h, got))
                except FileNotFoundError:
                    pass
            time.sleep(0.0002)

    go = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, "-c", _RESTORER, bundle_file, root, go], env=_env(which),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    t = threading.Thread(target=reader, daemon=True)
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        t.start()
        open(go, "w").close()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=100)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        t.join(timeout=10)
    assert seen_partial == []
    assert any(r["replaced"] for r in results)
    restored = sorted(h for r in results for h in r["restored"])
    assert restored == sorted(hashes)  # each kernel put in place by exactly one restorer
    for r in results:
        assert r["blocked"] == {} and sorted(r["restored"] + r["existing"]) == sorted(hashes)
        assert set(r["replaced"]) <= set(r["restored"])
    assert _kernel_tree(root) == want and _litter(root) == []
    assert _tree(outside) == before


# -- the CLI: per-kernel lines and exit codes -------------------------------

def test_cli_restore_reports_each_blocked_kernel(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PYRUNTIME_RESTORE_ON_CONFLICT", raising=False)
    b = _bundle()
    bundle_file = str(tmp_path / "b.prtb")
    b.save(bundle_file)
    root, _, h, _ = _setup(tmp_path, "fifo", b)
    link = b.kernel_artifacts[2].kernel_hash
    os.symlink("/etc", os.path.join(root, link))

    assert main(["bundle", "restore", bundle_file, "--cache-dir", root, "--on-conflict", "error"]) == 2
    err = capsys.readouterr().err
    assert f"  blocked {h}: a FIFO\n" in err and f"  blocked {link}: a symlink to '/etc'\n" in err
    assert "nothing was written" in err and err.count("pyruntime: error:") == 1
    assert sorted(os.listdir(root)) == sorted([h, link])

    assert main(["bundle", "restore", bundle_file, "--cache-dir", root, "--on-conflict", "skip"]) == 0
    out, err = capsys.readouterr()
    assert "restored 1 kernels" in out and "0 replaced; 2 blocked" in out
    assert f"  blocked {h}: a FIFO\n" in err and f"  blocked {link}: a symlink to '/etc'\n" in err
    assert "left in place: --on-conflict skip" in err

    assert main(["cache", "clean", root]) == 0
    out = capsys.readouterr().out
    assert f"blocked {os.path.join(root, h)}: a FIFO, not a kernel directory" in out
    assert f"blocked {os.path.join(root, link)}: a symlink to '/etc'" in out
    assert stat.S_ISFIFO(os.lstat(os.path.join(root, h)).st_mode)  # clean reports, never removes them

    assert main(["bundle", "restore", bundle_file, "--cache-dir", root]) == 0
    out, err = capsys.readouterr()
    assert f"  replaced {h}: a FIFO held its path" in out and f"  replaced {link}: a symlink to '/etc'" in out
    assert "restored 2 kernels" in out and "2 replaced; 0 blocked" in out and "blocked" not in err
    assert _kernel_tree(root) == _want(b, root)
    assert os.path.isdir("/etc") and not os.path.islink(os.path.join(root, link))


# --------------------------------------------------------------------------
# 2. one rule for names: what the reader accepts, the cleaner keeps

LITTER_NAMES = ["tmp.x", "tmp.", "tmp.pid_1_abc", "tmp.pid_123_prt0123456789ab_0", "k.cubin.tmp.pid_1_x",
                "a.tmp.pid_", "tmp.tmp.pid_2"]
# near misses: names the reader accepts and the cleaner must keep
KEPT_NAMES = ["tmp", "tmpx.cubin", "x.tmp", "a.tmp.b", "tmp-pid_1", "TMP.x", "Tmp.pid_1", "x.tmp.pid",
              "x.tmp.pidx_1", "_tmp.x", "k.tmppid_1", " tmp.x"]


def _craft(kernels, blobs) -> bytes:
    """A well-formed container (right checksums and digest) around a
    hand-made kernel table: only the bundle's own checks stand between it
    and the disk."""
    kernels_json = json.dumps(kernels).encode()
    header = {"format": "pyruntime-triton-bundle", "format_version": 1, "pyruntime_version": "0.1.0",
              "triton_version": None, "targets": [],
              "content_digest": bundle_format.content_digest(kernels_json, blobs), "blobs": [len(b) for b in blobs]}
    entries = [("header.json", json.dumps(header).encode()), ("kernels.json", kernels_json)]
    entries += [(f"blob.{i}", b) for i, b in enumerate(blobs)]
    return packing.pack(entries)


def _one_kernel(h: str, names: list[str]) -> bytes:
    files = [[name, 0, 2 * i, 2] for i, name in enumerate(names)]
    return _craft([{"hash": h, "device": 0, "target": None, "triton_version": None, "files": files}],
                  [b"ab" * len(names)])


@pytest.mark.parametrize("name", LITTER_NAMES)
def test_the_reader_refuses_litter_file_names(restorer, name, tmp_path):
    with pytest.raises(BundleFormatError, match="reserved for in-flight writes"):
        TritonBundle.from_bytes(_one_kernel("KERN", ["k.cubin", name]))
    built = TritonBundle([TritonKernelArtifacts("KERN", 0, [TritonKernelArtifact(name, b"x")])])
    with pytest.raises(BundleFormatError, match="reserved for in-flight writes"):
        built.restore(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("h", ["tmp.x", "a.tmp.pid_1", "KERN.tmp.pid_9_z", "tmp.pid_1_prt0123456789ab_0"])
def test_the_reader_refuses_litter_kernel_hashes(restorer, h):
    with pytest.raises(BundleFormatError, match="not a plain directory name"):
        TritonBundle.from_bytes(_one_kernel(h, ["k.cubin"]))


def test_names_the_reader_accepts_are_never_cleaned(restorer, tmp_path):
    """Restore near-miss names, age everything by two hours: no clean, of
    any kind, removes a file of a restored kernel, and the digest of the
    cache is the same before and after."""
    data = _one_kernel("KERN", KEPT_NAMES)
    bundle = TritonBundle.from_bytes(data)
    hashes = ["tmp", "x.tmp", "a.tmp.pid", "TMP.x", "k.tmppid_1"]
    kernels = [TritonKernelArtifacts(h, 0, [TritonKernelArtifact(n, b"ab") for n in KEPT_NAMES]) for h in hashes]
    both = TritonBundle([*bundle.kernel_artifacts, *kernels])
    root = tmp_path / "cache"
    result = both.restore(root)
    assert sorted(result.restored) == sorted(["KERN", *hashes])
    old = time.time() - 7200
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (old, old))
    before, digest = _tree(str(root)), hash_dir(root)
    for kw in ({}, {"max_age": 0}, {"everything": True}):
        assert cache.clean(root, **kw).removed == []
    assert _tree(str(root)) == before and hash_dir(root) == digest
    assert len(before) == len(KEPT_NAMES) * (1 + len(hashes))


def test_the_cleaner_removes_only_litter_and_collect_leaves_it_out(restorer, tmp_path):
    """Litter inside and beside restored kernels: collect skips it (a
    bundle of the cache restores and hashes the same), clean removes it."""
    b = _bundle()
    root = tmp_path / "cache"
    b.restore(root)
    kdir = root / b.kernel_artifacts[0].kernel_hash
    for name in LITTER_NAMES:
        (kdir / name).write_bytes(b"partial")
    (root / "a.tmp.pid_1").mkdir()
    (root / "a.tmp.pid_1" / "k.cubin").write_bytes(b"x")
    for name in ("tmp.pid_1_x", "KERN9.tmp.pid_2_y"):
        (root / name).write_bytes(b"x")
    digest = hash_dir(root)  # the digest skips litter too
    collected = collect_dir(root)
    assert sorted(k.kernel_hash for k in collected.kernel_artifacts) == _hashes(b)
    assert all(not rules.is_litter(a.filename) for k in collected.kernel_artifacts for a in k.artifacts)
    again = tmp_path / "again"
    collected.restore(again)
    assert _tree(str(again)) == _want(b, again)
    old = time.time() - 7200
    for p in [*(kdir / n for n in LITTER_NAMES), root / "a.tmp.pid_1", root / "tmp.pid_1_x",
              root / "KERN9.tmp.pid_2_y"]:
        os.utime(p, (old, old))
    removed = cache.clean(root).removed
    assert len(removed) == len(LITTER_NAMES) + 3
    assert _kernel_tree(str(root)) == _want(b, root) and sorted(os.listdir(root)) == _hashes(b)
    assert hash_dir(root) == digest


ALPHABET = st.sampled_from(list("tmp.id_0x-T") + ["tmp.", ".tmp.pid_", "pid_"])


@given(st.lists(ALPHABET, min_size=1, max_size=6).map("".join))
def test_reader_and_cleaner_agree_on_every_name(name):
    """A name any check accepts (C fast path, the rules' Python one, the
    reader's item check) is never litter; litter is refused by all."""
    accepts = []
    for check in [b.table_is_plain for b in BACKENDS if hasattr(b, "table_is_plain")] + [rules._table_is_plain_py]:
        accepts.append(check(["KERN"], [1], [name], [0, 0, 0], [0]))
        accepts.append(check([name], [1], ["k.cubin"], [0, 0, 0], [0]))
    try:
        rules.check_file_name(name)
        file_ok = True
    except BundleFormatError:
        file_ok = False
    hash_ok = rules.is_kernel_hash(name)
    assert accepts[0::2] == [file_ok] * (len(accepts) // 2)
    assert accepts[1::2] == [hash_ok] * (len(accepts) // 2)
    if rules.is_litter(name):
        assert not file_ok and not hash_ok
    assert rules.is_litter(name) == (name.startswith("tmp.") or ".tmp.pid_" in name)


# --------------------------------------------------------------------------
# 3. litter by lock or age, never by pid

def _unshare_ok() -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                           timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid refused: {probe.stderr.decode(errors='replace').strip()}")


def _child_of(pid: int, timeout: float = 20) -> int:
    """The one child of ``pid`` (unshare --fork's: the namespace's pid 1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        if kids:
            return kids[0]
        time.sleep(0.01)
    raise AssertionError(f"no child of {pid}")


_PAUSED = textwrap.dedent("""
    import os, sys, time
    from pyruntime.bundle import restore as cache
    from pyruntime.bundle.format import load_bundle
    b = load_bundle(sys.argv[1])
    second = b.kernel_artifacts[1].kernel_hash
    def hook(kernel_hash, filename):
        if kernel_hash == second:  # first kernel in place, second half written
            print("ready", os.getpid(), flush=True)
            time.sleep(300)
    cache._after_file_hook = hook
    b.restore(sys.argv[2])
""")


def _clean_cli(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyruntime", "cache", "clean", root, "--all"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_a_restorer_in_another_pid_namespace_keeps_its_tmp_dir(tmp_path):
    """The writer (the twin, paused mid-kernel by the test hook) is pid 1 of
    its own PID namespace: its tmp dir names a pid that means another
    process here. Every clean and restore of the host keeps that directory;
    once the writer is SIGKILLed, the next clean removes it."""
    _unshare_ok()
    b = _bundle(n=3)
    bundle_file = str(tmp_path / "b.prtb")
    b.save(bundle_file)
    root = str(tmp_path / "cache")
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _PAUSED,
                          bundle_file, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
        assert line[:1] == ["ready"], p.stderr.read()
        assert line[1] == "1"  # its pid in its namespace
        writer = _child_of(p.pid)
        (tmp,) = _litter(root)
        assert tmp.startswith("tmp.pid_1_prt") and rules.is_restore_tmp(tmp)
        tmp_path_ = os.path.join(root, tmp)
        inside = sorted(os.listdir(tmp_path_))
        old = time.time() - 7200
        os.utime(tmp_path_, (old, old))  # old too: the lock decides

        for kw in ({}, {"max_age": 0}, {"max_age": None}, {"everything": True}):
            r = cache.clean(root, **kw)
            assert r.removed == [] and r.kept == [tmp_path_], kw
        out = _clean_cli(root)
        assert out.returncode == 0 and "removed 0 tmp.* entries; kept 1" in out.stdout, out.stdout + out.stderr
        other = _bundle(n=2, prefix="OTHER")
        r = other.restore(root)  # a restore here sweeps litter first
        assert r.stale_removed == [] and sorted(r.restored) == _hashes(other)
        assert sorted(os.listdir(tmp_path_)) == inside  # untouched
        assert p.poll() is None

        os.kill(writer, signal.SIGKILL)
        assert p.wait(timeout=30) != 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = cache.clean(root, max_age=None)  # no age: the lock is gone, so is its writer
    assert r.removed == [tmp_path_] and r.kept == []
    assert _litter(root) == []
    first = b.kernel_artifacts[0].kernel_hash
    assert {p_: d for p_, d in _kernel_tree(root).items() if p_.startswith(first)} == \
        {p_: d for p_, d in _want(b, root).items() if p_.startswith(first)}
    assert b.restore(root).existing == [first]
    assert _kernel_tree(root) == {**_want(b, root), **_want(other, root)}


_BIG_RESTORER = textwrap.dedent("""
    import sys
    from pyruntime import core
    from pyruntime.bundle.format import load_bundle
    assert core.BACKEND == sys.argv[3], core.BACKEND
    print("ready", flush=True)
    load_bundle(sys.argv[1]).restore(sys.argv[2])
    print("finished", flush=True)
""")


def _files_in(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("then", ["kill", "continue"])
@pytest.mark.parametrize("which", NAMES)
def test_a_stopped_restorer_in_another_pid_namespace_keeps_its_tmp_dirs(which, then, tmp_path):
    """No hook: a restore of many kernels (C: on several threads) in its own
    PID namespace is SIGSTOPped with tmp dirs in flight; the host's cleans,
    whatever the age, keep every one its writer has locked, which is every
    one holding a file (a directory caught between its mkdir and its flock
    is empty and may go: its writer then makes another). Then either the
    writer is SIGKILLed (one clean removes what it left, and a restore
    completes the cache) or it goes on and completes it itself."""
    _unshare_ok()
    b = _bundle(n=1500, files=4, size=1500)
    bundle_file = str(tmp_path / "b.prtb")
    b.save(bundle_file)
    env = _env(which)
    env["PYRUNTIME_IO_THREADS"] = "4"
    for attempt in range(4):
        root = str(tmp_path / f"cache{attempt}")
        want = _want(b, root)
        os.mkdir(root)
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _BIG_RESTORER,
                              bundle_file, root, which], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            writer = _child_of(p.pid)
            in_flight: dict[str, list[str]] = {}
            deadline = time.monotonic() + 60
            while p.poll() is None and time.monotonic() < deadline:
                names = os.listdir(root)
                if len(names) > 20 and any(map(rules.is_litter, names)):
                    os.kill(writer, signal.SIGSTOP)
                    time.sleep(0.05)  # let every thread stop
                    in_flight = {n: _files_in(os.path.join(root, n)) for n in _litter(root)}
                    if in_flight:
                        break
                    os.kill(writer, signal.SIGCONT)
                time.sleep(0.0005)
            if not in_flight:
                p.wait(timeout=60)
                continue  # finished before it was caught: more luck next time
            assert all(rules.is_restore_tmp(n) and n.startswith("tmp.pid_1_prt") for n in in_flight)
            paths = {os.path.join(root, n): files for n, files in in_flight.items()}
            locked = sorted(x for x, files in paths.items() if files)
            old = time.time() - 7200
            for x in paths:
                os.utime(x, (old, old))
            for kw in ({"max_age": 0}, {"everything": True}):
                r = cache.clean(root, **kw)
                assert set(r.kept) >= set(locked) and all(not paths[x] for x in r.removed), (kw, r, paths)
                assert all(_files_in(x) == paths[x] for x in locked)
            if then == "continue":
                os.kill(writer, signal.SIGCONT)
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0 and "finished" in out, err
                assert _kernel_tree(root) == want and _litter(root) == []
                return
            os.kill(writer, signal.SIGKILL)
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        present = [n for n in os.listdir(root) if not rules.is_litter(n)]
        got = _kernel_tree(root)
        assert got == {x: want[x] for x in got}  # every visible kernel is complete
        assert len({x.split("/")[0] for x in got}) == len(present) < len(b)
        left = [os.path.join(root, n) for n in _litter(root)]
        assert set(locked) <= set(left)
        r = cache.clean(root, max_age=None)
        assert sorted(r.removed) == sorted(left) and r.kept == []
        result = load_bundle(bundle_file).restore(root)
        assert sorted(result.existing) == sorted(present) and result.stale_removed == []
        assert _kernel_tree(root) == want and _litter(root) == []
        return
    pytest.skip("the restore finished before it could be stopped 4 times")


_CLEANER = textwrap.dedent("""
    import os, sys
    from pyruntime.bundle import restore as cache
    root, done = sys.argv[1:3]
    n = 0
    print("ready", flush=True)
    while not os.path.exists(done):
        cache.clean(root, max_age=None, everything=n % 2 == 0)
        n += 1
    print(n, flush=True)
""")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("which", NAMES)
def test_a_cleaner_racing_a_restore_never_takes_a_live_directory(which, tmp_path):
    """`cache clean --all` in a tight loop while a restore of many kernels
    runs: the cleaner removes only directories no writer holds (it may take
    one between a writer's mkdir and its flock: the writer then makes
    another), so the restore succeeds and every kernel is complete."""
    b = _bundle(n=800, files=3, size=500)
    bundle_file = str(tmp_path / "b.prtb")
    b.save(bundle_file)
    root = str(tmp_path / "cache")
    os.mkdir(root)
    done = str(tmp_path / "done")
    env = _env(which)
    env["PYRUNTIME_IO_THREADS"] = "4"
    cleaner = subprocess.Popen([sys.executable, "-c", _CLEANER, root, done], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cleaner.stdout.readline().strip() == "ready", cleaner.stderr.read()
        out = subprocess.run([sys.executable, "-c", _BIG_RESTORER, bundle_file, root, which], env=env,
                             capture_output=True, text=True, timeout=150)
        open(done, "w").close()
        rounds, err = cleaner.communicate(timeout=60)
        assert cleaner.returncode == 0, err
    finally:
        if cleaner.poll() is None:
            cleaner.kill()
            cleaner.wait()
    assert out.returncode == 0 and "finished" in out.stdout, out.stderr
    assert int(rounds) > 0
    assert _kernel_tree(root) == _want(b, root) and _litter(root) == []


def test_a_cleaner_taking_the_directory_before_the_writers_lock_makes_it_move(tmp_path, monkeypatch):
    """The twin, made to meet the race the stress test can only hope for:
    a cleaner locks the fresh directory first (the writer takes r1), then a
    cleaner removes the fresh directory before the lock (the writer sees
    that it is not its directory any more and takes r2)."""
    root = str(tmp_path)
    real_flock = fcntl.flock
    calls = []

    def racing_flock(fd, op):
        calls.append(op)
        if len(calls) == 1:
            raise BlockingIOError(errno.EWOULDBLOCK, "held by a cleaner (test)")
        if len(calls) == 2:
            path = os.readlink(f"/proc/self/fd/{fd}")
            os.rmdir(path)  # a cleaner removed it before our lock
        return real_flock(fd, op)

    monkeypatch.setattr(twin.fcntl, "flock", racing_flock)
    table, jobs = table_of([("tmp.pid_1_prt000000000000_0", "K", [("f", b"data")])])
    (w,) = twin.write_kernels(root, table, jobs, 1, False)
    assert w.outcome == KERNEL_RENAMED and len(calls) == 3
    assert _tree(root) == {"K/f": b"data"}
    # the first directory, left for its cleaner, is unlocked restore litter
    assert _litter(root) == ["tmp.pid_1_prt000000000000_0"]
    monkeypatch.setattr(twin.fcntl, "flock", real_flock)
    assert cache.clean(root, max_age=None).removed == [os.path.join(root, "tmp.pid_1_prt000000000000_0")]


def test_without_locks_restore_dirs_go_by_age(tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): writers go on unlocked, and a
    cleaner cannot tell a live restore from a dead one, so it goes by age."""
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available (test)")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    root = tmp_path / "cache"
    _bundle().restore(root, on_conflict="replace")
    young = root / rules.restore_tmp_name(1, "a" * 12, 0)
    young.mkdir()
    assert cache.clean(root).removed == [] and cache.clean(root).kept == [str(young)]
    assert cache.clean(root, max_age=0).removed == [str(young)]


def test_triton_litter_goes_by_age_whatever_its_pid(tmp_path):
    """Triton never locks its tmp.pid_<pid>_<uuid> directories: a restore
    keeps a young one whose pid is dead here (it may live in another
    namespace) and removes an old one whose pid is alive, and removes an
    unlocked restore directory at once."""
    b = _bundle(n=1)
    root = tmp_path / "cache"
    root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    young = root / f"tmp.pid_{int(dead.stdout)}_3f2a6c1e-0c4d-4a8e-9b1a-0123456789ab"
    old = root / f"tmp.pid_{os.getpid()}_9a9a9a9a-0c4d-4a8e-9b1a-0123456789ab"
    ours = root / rules.restore_tmp_name(os.getpid(), "b" * 12, 7)
    for d in (young, old, ours):
        d.mkdir()
        (d / "x").write_bytes(b"partial")
    t = time.time() - 2 * cache.DEFAULT_MAX_AGE_S
    os.utime(old, (t, t))
    result = b.restore(root)
    assert sorted(result.stale_removed) == sorted([str(old), str(ours)])
    assert young.exists() and _litter(str(root)) == [young.name]
