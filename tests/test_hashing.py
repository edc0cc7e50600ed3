"""Digests of bytes, files and directory trees on both backends.

The tree tests build real directories (files, nested dirs, symlinks, the
``lock`` files and ``tmp.*`` dirs Triton leaves around) and hold the C
module, the twin and a third implementation written from docs/FORMAT.md
("Directory digest") against each other.
"""

from __future__ import annotations

import array
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyruntime import core as native, hashing

BACKENDS = native.backends()
PY = next(b for b in BACKENDS if b.name == "python")
MiB = 1 << 20
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HEX = set("0123456789abcdef")


def _both():
    if BACKENDS[0].name != "c":
        pytest.skip("the C module is not built")
    return BACKENDS[0], PY


# ---------------------------------------------------------------- the spec, written from FORMAT.md
def _spec_excluded(name: bytes, is_reg: bool) -> bool:
    return (is_reg and name == b"lock") or name.startswith(b"tmp.") or b".tmp.pid_" in name


def spec_digest(root: bytes | str) -> str:
    h = xxhash.xxh3_128()
    h.update(b"PRTH\x01")

    def record(kind: bytes, rel: bytes, size: int) -> None:
        h.update(kind + len(rel).to_bytes(4, "little") + rel + size.to_bytes(8, "little"))

    def walk(abs_dir: bytes, rel_dir: bytes) -> None:
        for name in sorted(os.listdir(abs_dir)):
            full, rel = abs_dir + b"/" + name, (rel_dir + b"/" + name if rel_dir else name)
            mode = os.lstat(full).st_mode
            if _spec_excluded(name, stat.S_ISREG(mode)):
                continue
            if stat.S_ISLNK(mode):
                target = os.readlink(full)
                record(b"l", rel, len(target))
                h.update(target)
            elif stat.S_ISREG(mode):
                body = Path(os.fsdecode(full)).read_bytes()
                record(b"f", rel, len(body))
                h.update(body)
            else:
                record(b"d", rel, 0)
                walk(full, rel)

    walk(os.fsencode(root), b"")
    return h.hexdigest()


# ---------------------------------------------------------------- trees
SPECIAL_NAMES = [
    b"lock", b"tmp.x", b"tmp.", b"a.tmp.pid_7_1", b"lock2", b"tmpx", b"a", b"A", b"a.b", b"a-b",
    b"ab", b"b", b"\xff", b"\xc3\xa9", b"__grp__k.json", b"k.cubin", b" ", b"z" * 40,
]
names = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.binary(min_size=1, max_size=12).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")),
)
leaf = st.one_of(
    st.tuples(st.just("f"), st.binary(max_size=300)),
    st.tuples(st.just("l"), st.binary(min_size=1, max_size=60).filter(lambda t: b"\0" not in t)),
)
trees = st.recursive(
    st.dictionaries(names, leaf, max_size=5),
    lambda sub: st.dictionaries(names, st.one_of(leaf, st.tuples(st.just("d"), sub)), max_size=5),
    max_leaves=20,
)


def build(root: bytes, tree: dict, reverse: bool = False) -> None:
    os.makedirs(root, exist_ok=True)
    for name, (kind, body) in sorted(tree.items(), reverse=reverse):
        path = root + b"/" + name
        if kind == "f":
            with open(path, "wb") as f:
                f.write(body)
        elif kind == "l":
            os.symlink(body, path)
        else:
            build(path, body, reverse)


def strip_excluded(tree: dict) -> dict:
    out = {}
    for name, (kind, body) in tree.items():
        if _spec_excluded(name, kind == "f"):
            continue
        out[name] = (kind, strip_excluded(body)) if kind == "d" else (kind, body)
    return out


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


# ---------------------------------------------------------------- hash_bytes / hash_file
@FIXTURE_OK
@given(data=st.binary(max_size=5000))
def test_hash_bytes_agrees_with_xxh3_128(backend, data):
    want = xxhash.xxh3_128_hexdigest(data)
    assert backend.hash_bytes(data) == want
    assert backend.hash_bytes(bytearray(data)) == want
    assert backend.hash_bytes(memoryview(data)) == want


@given(data=st.binary(max_size=5000))
def test_hash_file_c_and_twin_agree(data):
    c, py = _both()
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        assert c.hash_file(f.name) == py.hash_file(f.name) == xxhash.xxh3_128_hexdigest(data)


@pytest.mark.parametrize("size", [0, 1, 16, 17, 240, 241, 1024, MiB - 1, MiB, MiB + 1, 5 * MiB + 3])
def test_hash_bytes_and_file_at_boundary_sizes(backend, tmp, size):
    data = os.urandom(size)
    want = xxhash.xxh3_128_hexdigest(data)
    assert backend.hash_bytes(data) == want
    (tmp / "f").write_bytes(data)
    assert backend.hash_file(tmp / "f") == want  # 1 MiB read chunks in both backends
    assert len(want) == 32 and set(want) <= HEX


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_c_xxh3_runs_the_avx2_build_where_the_cpu_has_avx2():
    c, _ = _both()
    name = c.ffi.string(c.lib.prt_xxh_impl_name()).decode()
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        assert name == ("avx2" if "avx2" in _cpu_flags() else "libxxhash")
    else:
        assert name == "libxxhash"


def test_c_xxh3_64_and_128_match_xxhash_at_every_small_length():
    # Every length through 2 KiB crosses each XXH3 size class and the first
    # stripes and block of the long-input loop; then a few block multiples.
    c, _ = _both()
    blob = os.urandom(70_000)
    for n in [*range(2049), 4095, 4096, 4097, 65_536, 70_000]:
        data = blob[:n]
        assert c.lib.prt_xxh3_64(data, n) == xxhash.xxh3_64_intdigest(data), n
        assert c.hash_bytes(data) == xxhash.xxh3_128_hexdigest(data), n


def test_hash_bytes_of_a_typed_buffer_hashes_its_bytes(backend):
    ints = array.array("I", range(300))
    assert backend.hash_bytes(memoryview(ints)) == xxhash.xxh3_128_hexdigest(ints.tobytes())


def test_hash_file_accepts_str_bytes_and_path(backend, tmp):
    p = tmp / "x.bin"
    p.write_bytes(b"abc")
    want = xxhash.xxh3_128_hexdigest(b"abc")
    assert backend.hash_file(p) == backend.hash_file(str(p)) == backend.hash_file(os.fsencode(p)) == want


def test_hash_file_errors(backend, tmp):
    with pytest.raises(FileNotFoundError, match="missing"):
        backend.hash_file(tmp / "missing")
    with pytest.raises(IsADirectoryError):
        backend.hash_file(tmp)


def test_hash_file_follows_a_symlink(backend, tmp):
    (tmp / "real").write_bytes(b"content")
    (tmp / "link").symlink_to("real")
    assert backend.hash_file(tmp / "link") == xxhash.xxh3_128_hexdigest(b"content")


# ---------------------------------------------------------------- hash_dir: agreement
@settings(max_examples=max(10, settings.default.max_examples // 2))  # trees cost real files
@given(tree=trees)
def test_c_twin_and_spec_agree_on_random_trees(tree):
    c, py = _both()
    with tempfile.TemporaryDirectory() as d:
        root = os.fsencode(d) + b"/t"
        build(root, tree)
        want = spec_digest(root)
        assert c.hash_dir(root) == want
        assert py.hash_dir(root) == want
        # Excluded entries never count: the stripped tree hashes the same,
        # and so does the same tree created in the opposite order.
        build(os.fsencode(d) + b"/s", strip_excluded(tree), reverse=True)
        assert c.hash_dir(os.fsencode(d) + b"/s") == want
        assert py.hash_dir(os.fsencode(d) + b"/s") == want


def test_empty_directory_has_a_fixed_digest(backend, tmp):
    assert backend.hash_dir(tmp) == xxhash.xxh3_128_hexdigest(b"PRTH\x01")


def test_multi_mib_files_in_a_tree(backend, tmp):
    (tmp / "k").mkdir()
    (tmp / "k" / "big.cubin").write_bytes(os.urandom(3 * MiB + 5))
    (tmp / "k" / "zeros").write_bytes(bytes(2 * MiB))
    assert backend.hash_dir(tmp) == spec_digest(tmp)


def make_cache(root: Path) -> Path:
    """A small Triton-like cache: kernel dirs with artifacts, lock files, a
    tmp.* dir of an in-flight compile and an older-Triton temporary file."""
    for k in ("AAAA", "BBBB", "CCCC"):
        d = root / k
        d.mkdir(parents=True)
        (d / "kern.cubin").write_bytes(k.encode() * 100)
        (d / "kern.json").write_text('{"name": "kern"}')
        (d / "__grp__kern.json").write_text("{}")
        (d / "lock").write_bytes(b"")
    (root / "tmp.pid_12_345").mkdir()
    (root / "tmp.pid_12_345" / "half.cubin").write_bytes(b"partial")
    (root / "AAAA" / "kern.json.tmp.pid_99_1").write_text("partial")
    return root


def test_digest_is_stable_across_runs_and_processes(backend, tmp):
    root = make_cache(tmp / "cache")
    first = backend.hash_dir(root)
    assert backend.hash_dir(root) == first
    assert hashing.hash_dir(str(root)) == first
    for pure in ("0", "1"):
        env = dict(os.environ, PYRUNTIME_PURE_PYTHON=pure)
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from pyruntime import hashing; print(hashing.hash_dir(sys.argv[1]))",
             str(root)],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        assert out == first
    # a copy elsewhere (new inodes, new mtimes, new readdir order) hashes the same
    shutil.copytree(root, tmp / "copy", symlinks=True)
    assert backend.hash_dir(tmp / "copy") == first


# ---------------------------------------------------------------- hash_dir: semantics
def test_lock_files_and_tmp_dirs_are_excluded(backend, tmp):
    root = make_cache(tmp / "cache")
    base = backend.hash_dir(root)
    (root / "BBBB" / "lock").write_bytes(b"changed lock contents")
    (root / "tmp.pid_12_345" / "more").write_bytes(b"x")
    (root / "CCCC" / "tmp.other").mkdir()
    (root / "CCCC" / "tmp.file").write_bytes(b"a file named tmp.* is skipped too")
    (root / "CCCC" / "kern.cubin.tmp.pid_1_2").write_bytes(b"x")
    (root / "lock").write_bytes(b"")
    assert backend.hash_dir(root) == base
    for excluded in ("BBBB/lock", "tmp.pid_12_345", "AAAA/kern.json.tmp.pid_99_1"):
        p = root / excluded
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert backend.hash_dir(root) == base


def test_only_regular_files_named_lock_are_excluded(backend, tmp):
    base = backend.hash_dir(tmp)
    (tmp / "lock").mkdir()
    as_dir = backend.hash_dir(tmp)
    assert as_dir != base  # a directory named lock counts
    (tmp / "lock").rmdir()
    (tmp / "lock").symlink_to("anything")
    assert backend.hash_dir(tmp) not in (base, as_dir)  # and so does a symlink
    (tmp / "lock").unlink()
    (tmp / "lock").write_bytes(b"x")
    assert backend.hash_dir(tmp) == base
    (tmp / "locks").write_bytes(b"")
    assert backend.hash_dir(tmp) != base  # the name must be exactly "lock"


def test_symlinks_are_hashed_by_target_not_followed(backend, tmp):
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "data").write_bytes(b"one")
    root = tmp / "root"
    root.mkdir()
    (root / "link").symlink_to(outside / "data")
    (root / "dirlink").symlink_to(outside)
    base = backend.hash_dir(root)
    assert base == spec_digest(root)
    # the pointed-to file and directory change: the digest does not
    (outside / "data").write_bytes(b"two, and longer")
    (outside / "new").write_bytes(b"x")
    assert backend.hash_dir(root) == base
    # the target string changes: the digest does
    (root / "link").unlink()
    os.symlink("../outside/data", root / "link")  # same file, other target string
    assert backend.hash_dir(root) != base
    # a symlink differs from a file with the target string as contents
    (root / "link").unlink()
    (root / "link").write_bytes(os.fsencode(outside / "data"))
    assert backend.hash_dir(root) != base


def test_dangling_and_self_symlinks_are_fine(backend, tmp):
    (tmp / "dangling").symlink_to("does/not/exist")
    (tmp / "loop").symlink_to("loop")
    assert backend.hash_dir(tmp) == spec_digest(tmp)


@pytest.mark.parametrize(
    "change",
    ["rename", "move_into_subdir", "content", "append_empty_file", "empty_dir", "swap_contents", "file_to_dir"],
)
def test_every_structural_change_changes_the_digest(backend, tmp, change):
    (tmp / "a").write_bytes(b"alpha")
    (tmp / "b").write_bytes(b"beta")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "c").write_bytes(b"gamma")
    base = backend.hash_dir(tmp)
    if change == "rename":
        (tmp / "a").rename(tmp / "a2")
    elif change == "move_into_subdir":
        (tmp / "a").rename(tmp / "sub" / "a")
    elif change == "content":
        (tmp / "sub" / "c").write_bytes(b"gammA")
    elif change == "append_empty_file":
        (tmp / "sub" / "empty").write_bytes(b"")
    elif change == "empty_dir":
        (tmp / "sub" / "d").mkdir()
    elif change == "swap_contents":
        (tmp / "a").write_bytes(b"beta")
        (tmp / "b").write_bytes(b"alpha")
    elif change == "file_to_dir":
        (tmp / "b").unlink()
        (tmp / "b").mkdir()
    assert backend.hash_dir(tmp) != base
    assert backend.hash_dir(tmp) == spec_digest(tmp)


def test_path_boundaries_are_unambiguous(backend, tmp):
    # "ab" as one file vs "a" dir holding "b": length prefixes keep them apart
    one, two = tmp / "one", tmp / "two"
    one.mkdir()
    two.mkdir()
    (one / "ab").write_bytes(b"")
    (two / "a").mkdir()
    (two / "a" / "b").write_bytes(b"")
    assert backend.hash_dir(one) != backend.hash_dir(two)


def test_names_sort_by_raw_bytes_not_locale(backend, tmp):
    for name in (b"B", b"a", b"\xc3\xa9", b"\xff", b"_", b"Z"):
        (Path(os.fsdecode(os.fsencode(tmp) + b"/" + name))).write_bytes(name)
    assert backend.hash_dir(tmp) == spec_digest(tmp)


def test_hash_dir_accepts_str_bytes_and_path(backend, tmp):
    make_cache(tmp)
    assert backend.hash_dir(tmp) == backend.hash_dir(str(tmp)) == backend.hash_dir(os.fsencode(tmp))


def test_root_given_as_a_symlink_is_followed(backend, tmp):
    make_cache(tmp / "real")
    (tmp / "alias").symlink_to("real")
    assert backend.hash_dir(tmp / "alias") == backend.hash_dir(tmp / "real")


# ---------------------------------------------------------------- hash_dir: errors
def test_hash_dir_on_a_file_is_not_a_directory(backend, tmp):
    (tmp / "f").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="Not a directory"):
        backend.hash_dir(tmp / "f")


def test_hash_dir_on_a_missing_path_is_file_not_found(backend, tmp):
    with pytest.raises(FileNotFoundError, match="nope"):
        backend.hash_dir(tmp / "nope")
    (tmp / "dangling").symlink_to("nope")
    with pytest.raises(FileNotFoundError):
        backend.hash_dir(tmp / "dangling")


def test_hash_dir_rejects_special_files_by_name(backend, tmp):
    (tmp / "sub").mkdir()
    os.mkfifo(tmp / "sub" / "fifo")
    with pytest.raises(ValueError, match="sub/fifo is not a regular file, directory or symlink"):
        backend.hash_dir(tmp)
    os.unlink(tmp / "sub" / "fifo")
    os.mkfifo(tmp / "sub" / "tmp.fifo")  # excluded names are never looked at
    assert backend.hash_dir(tmp) == spec_digest(tmp)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_hash_dir_unreadable_file_is_permission_error(backend, tmp):
    (tmp / "secret").write_bytes(b"x")
    (tmp / "secret").chmod(0)
    with pytest.raises(PermissionError):
        backend.hash_dir(tmp)


@pytest.mark.timeout(60)
def test_tmp_dirs_appearing_and_vanishing_during_a_walk(backend, tmp):
    """Triton creates and renames away tmp.* dirs while others hash the
    cache; an excluded entry that vanishes mid-walk must not be an error."""
    root = make_cache(tmp / "cache")
    base = backend.hash_dir(root)
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            d = root / f"tmp.pid_{i % 7}"
            d.mkdir(exist_ok=True)
            (d / "x").write_bytes(b"x")
            (root / "AAAA" / "lock").unlink(missing_ok=True)
            shutil.rmtree(d)
            (root / "AAAA" / "lock").write_bytes(b"")
            i += 1

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        for _ in range(400):
            assert backend.hash_dir(root) == base
    finally:
        stop.set()
        t.join(10)
