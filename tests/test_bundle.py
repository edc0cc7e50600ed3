"""TritonBundler and the bundle file, on kernels really compiled by Triton
for cuda:90 (no GPU needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest

import bundle_kernels
from _trees import tree as _files
import pyruntime
from pyruntime.bundle import format as bundle_format, collect as bundler
from pyruntime import core as native
from pyruntime.bundle.rules import REPLACE_SENTINEL
from pyruntime.bundle.model import TritonBundle, TritonBundleEntry, TritonBundlerMetadata, TritonKernelArtifact, TritonKernelArtifacts
from pyruntime.bundle.collect import TritonBundler, collect_dir
from pyruntime.bundle.compat import abi_from_ext_suffix, installed_triton_abi, installed_triton_version, triton_cache_dir
from pyruntime.bundle.format import load_bundle
from pyruntime.errors import BundleFormatError

KERNEL_NAMES = sorted(fn.__name__ for fn, _, _ in bundle_kernels.SAMPLES)


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    return bundle_kernels.shared_cache(tmp_path_factory)


@pytest.fixture
def bundler_state(monkeypatch):
    """A clean TritonBundler around each life-cycle test."""
    monkeypatch.delenv("PYRUNTIME_BUNDLE", raising=False)
    monkeypatch.setattr(TritonBundler, "config", bundler.BundlerConfig())
    TritonBundler.end_compile()
    yield TritonBundler
    TritonBundler.end_compile()


# --------------------------------------------------------------------------
# public names


def test_public_names_are_lazy_exports():
    for name in ("TritonBundler", "TritonBundle", "TritonBundleEntry", "TritonKernelArtifact",
                 "TritonKernelArtifacts", "TritonBundlerMetadata", "collect_dir", "load_bundle"):
        assert name in pyruntime.__all__
        assert getattr(pyruntime, name) is getattr(pyruntime.bundle, name)


def test_import_pyruntime_bundler_does_not_import_triton_or_torch():
    import subprocess
    import sys

    code = ("import sys, pyruntime; pyruntime.TritonBundler; pyruntime.load_bundle; "
            "import pyruntime.bundle, pyruntime._cli_bundle; "
            "print('triton' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------
# collect


def test_collect_dir_reads_every_compiled_kernel(kernel_cache):
    cache_dir, hashes = kernel_cache
    bundle = collect_dir(cache_dir)
    assert sorted(k.kernel_hash for k in bundle.kernel_artifacts) == sorted(hashes)
    assert sorted(bundle.kernel_names()) == KERNEL_NAMES
    assert bundle.targets == ["cuda:90"]
    assert bundle.triton_version == installed_triton_version() == "3.9.0"
    for k in bundle.kernel_artifacts:
        assert k.target == "cuda:90" and k.triton_version == "3.9.0" and k.device == 0
        names = {a.filename for a in k.artifacts}
        (kname,) = k.kernel_names()
        assert {f"{kname}.cubin", f"{kname}.json", f"__grp__{kname}.json", f"{kname}.ptx",
                f"{kname}.ttir", f"{kname}.ttgir", f"{kname}.llir"} <= names
        for a in k.artifacts:
            with open(os.path.join(cache_dir, k.kernel_hash, a.filename), "rb") as f:
                on_disk = f.read()
            assert isinstance(a.payload, memoryview) and a.payload.readonly  # no copy per file
            if a.filename.startswith("__grp__"):
                # the directory became the sentinel, nothing else changed
                assert REPLACE_SENTINEL in bytes(a.payload)
                assert os.fsencode(cache_dir) not in bytes(a.payload)
                restored = bytes(a.payload).replace(REPLACE_SENTINEL, os.fsencode(os.path.join(cache_dir, k.kernel_hash)))
                assert restored == on_disk
            else:
                assert a.payload == on_disk


def test_bundle_level_sets_the_blob_compression_and_any_level_reads_back(kernel_cache, monkeypatch, tmp_path):
    cache_dir, _ = kernel_cache
    files = {}
    for level in ("0", "9"):
        monkeypatch.setenv("PYRUNTIME_BUNDLE_LEVEL", level)
        files[level] = collect_dir(cache_dir).to_bytes()
    assert len(files["9"]) < 0.9 * len(files["0"]), {k: len(v) for k, v in files.items()}
    monkeypatch.delenv("PYRUNTIME_BUNDLE_LEVEL")
    assert collect_dir(cache_dir).to_bytes() == files["9"]  # 9 is the default
    trees = []
    dest = tmp_path / "cache"  # the same place each time: .json files hold its path
    for data in files.values():
        TritonBundle.from_bytes(data).restore(dest)
        trees.append(_files(dest))
        shutil.rmtree(dest)
    assert trees[0] == trees[1] and len(trees[0]) > 10


@pytest.mark.parametrize("bad", ["13", "-1", "fast"])
def test_a_bad_bundle_level_fails_before_any_packing(kernel_cache, monkeypatch, bad):
    cache_dir, hashes = kernel_cache
    monkeypatch.setenv("PYRUNTIME_BUNDLE_LEVEL", bad)
    with pytest.raises(ValueError, match="PYRUNTIME_BUNDLE_LEVEL"):
        collect_dir(cache_dir)
    monkeypatch.setattr(TritonBundler.config, "enabled", True)
    with pytest.raises(ValueError, match="PYRUNTIME_BUNDLE_LEVEL"):
        TritonBundler.begin_compile()
    TritonBundler.end_compile()


def test_collect_dir_with_hashes_and_missing_ones(kernel_cache):
    cache_dir, hashes = kernel_cache
    bundle = collect_dir(cache_dir, [hashes[2], "NOSUCHKERNEL", hashes[0], hashes[2]])
    assert [k.kernel_hash for k in bundle.kernel_artifacts] == [hashes[2], hashes[0]]


def test_collect_dir_skips_incomplete_and_foreign_entries(kernel_cache, tmp_path):
    cache_dir, hashes = kernel_cache
    root = tmp_path / "cache"
    shutil.copytree(cache_dir, root)
    # a kernel still being written (no __grp__ yet), Triton tmp litter, a stray file
    (root / "HALFWRITTEN").mkdir()
    (root / "HALFWRITTEN" / "k.ttir").write_text("partial")
    (root / "tmp.pid_1_abc").mkdir()
    (root / "README").write_text("not a kernel")
    (root / hashes[0] / "tmp.pid_9_x").mkdir()  # Triton's in-flight dir inside a kernel
    (root / hashes[0] / "lock").write_text("")
    bundle = collect_dir(root)
    assert sorted(k.kernel_hash for k in bundle.kernel_artifacts) == sorted(hashes)
    first = next(k for k in bundle.kernel_artifacts if k.kernel_hash == hashes[0])
    assert not any(a.filename in ("tmp.pid_9_x", "lock") for a in first.artifacts)


def test_collect_dir_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        collect_dir(tmp_path / "missing")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        collect_dir(tmp_path / "f")
    with pytest.raises(BundleFormatError, match="not a plain directory name"):
        collect_dir(tmp_path, ["../etc"])
    assert len(collect_dir(tmp_path)) == 0


def test_collect_refuses_a_json_that_already_holds_the_sentinel(kernel_cache, tmp_path):
    cache_dir, hashes = kernel_cache
    root = tmp_path / "cache"
    shutil.copytree(cache_dir, root)
    meta = next(p for p in (root / hashes[1]).iterdir() if p.suffix == ".json" and not p.name.startswith("__grp__"))
    meta.write_text(meta.read_text().replace('"debug"', '"[REPLACE]"'))
    with pytest.raises(BundleFormatError, match=r"already contains the \[REPLACE\] sentinel"):
        collect_dir(root)
    # other files may hold it: only .json payloads are rewritten
    (root / hashes[1] / meta.name).write_text("{}")
    (root / hashes[1] / "notes.txt").write_bytes(b"[REPLACE]")
    assert len(collect_dir(root)) == len(hashes)


def test_collect_relocates_any_spelling_of_the_cache_dir(tmp_path):
    """Triton may have been given a symlinked or relative cache path: the
    __grp__ child paths name the directory however Triton spelled it."""
    real = tmp_path / "real"
    hashes = bundle_kernels.compile_samples(str(real), bundle_kernels.SAMPLES[:1])
    link = tmp_path / "link"
    link.symlink_to(real)
    grp = next((real / hashes[0]).glob("__grp__*.json"))
    text = grp.read_text().replace(str(real), str(link))  # as if compiled through the link
    grp.write_text(text)
    for root in (real, link):
        (k,) = collect_dir(root).kernel_artifacts
        payload = bytes(next(a.payload for a in k.artifacts if a.filename == grp.name))
        assert str(tmp_path).encode() not in payload
        paths = json.loads(payload)["child_paths"]
        assert all(p.startswith("[REPLACE]/") for p in paths.values())


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_a_file_changing_during_collect_is_read_again(kernel_cache, tmp_path, monkeypatch, change):
    """Files are read straight into the bundle's blobs at the size a stat
    saw; a file that changes size in between makes collect list and read
    that kernel again, so the bundle holds what the file holds after the change."""
    cache_dir, hashes = kernel_cache
    root = tmp_path / "cache"
    shutil.copytree(cache_dir, root)
    ptx = next((root / hashes[2]).glob("*.ptx"))

    def edit(kernel_hash):
        if kernel_hash != hashes[2]:
            return
        data = ptx.read_bytes()
        ptx.write_bytes(data + b"// appended" if change == "grow" else data[:100])

    monkeypatch.setattr(bundler, "_between_passes_hook", edit)
    bundle = collect_dir(root)
    monkeypatch.setattr(bundler, "_between_passes_hook", None)
    k = next(k for k in bundle.kernel_artifacts if k.kernel_hash == hashes[2])
    assert next(a.payload for a in k.artifacts if a.filename == ptx.name) == ptx.read_bytes()
    assert bundle == collect_dir(root)
    assert TritonBundle.from_bytes(bundle.to_bytes()) == bundle


def test_collected_blobs_are_reused_only_while_the_bundle_is_unchanged(kernel_cache):
    cache_dir, _ = kernel_cache
    fresh = collect_dir(cache_dir)
    assert fresh._packed is not None
    # the same kernels as plain bytes go through the general layout: same file
    plain = TritonBundle([dataclasses.replace(k, artifacts=[TritonKernelArtifact(a.filename, bytes(a.payload))
                                                             for a in k.artifacts])
                          for k in fresh.kernel_artifacts], fresh.triton_version, triton_abi=fresh.triton_abi)
    assert plain._packed is None
    assert plain.to_bytes() == fresh.to_bytes()
    # swap one payload in place: the collected blobs must not be reused
    k = fresh.kernel_artifacts[1]
    i = next(i for i, a in enumerate(k.artifacts) if a.filename.endswith(".ptx"))
    k.artifacts[i] = TritonKernelArtifact(k.artifacts[i].filename, b"// replaced")
    again = TritonBundle.from_bytes(fresh.to_bytes())
    assert again.kernel_artifacts[1].artifacts[i].payload == b"// replaced"
    assert again == fresh


def test_kernel_file_names_come_from_binary_artifacts():
    k = TritonKernelArtifacts("H", 0, [TritonKernelArtifact(n, b"") for n in
                                       ("a.cubin", "a.json", "b.hsaco", "c.spv", "c.ttir", "__grp__a.json")])
    assert k.kernel_names() == ["a", "b", "c"]


# --------------------------------------------------------------------------
# the bundle file


def test_round_trip_bytes_and_file(kernel_cache, tmp_path):
    cache_dir, _ = kernel_cache
    bundle = collect_dir(cache_dir)
    data = bundle.to_bytes()
    again = TritonBundle.from_bytes(data)
    assert again == bundle
    assert again.content_digest and len(again.content_digest) == 32
    assert again.pyruntime_version == pyruntime.__version__
    for k in again.kernel_artifacts:
        for a in k.artifacts:
            assert isinstance(a.payload, memoryview) and a.payload.readonly
    path = tmp_path / "k.prtb"
    assert bundle.save(path) == len(data) == path.stat().st_size
    assert load_bundle(path) == bundle
    assert not [p for p in tmp_path.iterdir() if p.name != "k.prtb"]  # no temporary left
    assert bundle.save(path) == len(data)  # over an existing file
    assert path.read_bytes() == data


def _header(data: bytes) -> dict:
    entries = pyruntime.packing.unpack(data)
    assert entries[0][0] == "header.json"
    return json.loads(entries[0][1])


def test_collect_records_this_interpreters_abi(kernel_cache):
    """Triton's cache keys differ per CPython wheel, so a collected bundle
    names the Python it was collected under, and the file carries it."""
    here = installed_triton_abi()
    assert here == sysconfig.get_config_var("EXT_SUFFIX").lstrip(".").rsplit(".", 1)[0]
    assert here.startswith(sys.implementation.cache_tag)  # "cpython-311..."
    bundle = collect_dir(kernel_cache[0])
    assert bundle.triton_abi == here
    data = bundle.to_bytes()
    assert _header(data)["triton_abi"] == here
    assert TritonBundle.from_bytes(data).triton_abi == here
    assert bundle_format.describe(data)["triton_abi"] == here


@pytest.mark.parametrize("suffix,tag", [
    (".cpython-312-x86_64-linux-gnu.so", "cpython-312-x86_64-linux-gnu"),
    (".cpython-313t-x86_64-linux-gnu.so", "cpython-313t-x86_64-linux-gnu"),
    (".cpython-311-darwin.so", "cpython-311-darwin"),
    (".cp312-win_amd64.pyd", "cp312-win_amd64"),
    (".so", None),
    ("", None),
    (None, None),
    (".has space.so", None),
])
def test_abi_tag_from_ext_suffix(suffix, tag):
    assert abi_from_ext_suffix(suffix) == tag


def test_a_bundle_without_an_abi_reads_as_unknown(kernel_cache):
    """Files written before triton_abi existed have no such key: they read,
    and a bundle whose ABI is unknown writes exactly such a header."""
    assert TritonBundle.from_bytes(_craft([_kernel()], [b"ABCD"])).triton_abi is None
    assert TritonBundle.from_bytes(_craft([_kernel()], [b"ABCD"], {"triton_abi": None})).triton_abi is None
    unknown = dataclasses.replace(collect_dir(kernel_cache[0]), triton_abi=None)
    data = unknown.to_bytes()
    assert "triton_abi" not in _header(data)
    assert TritonBundle.from_bytes(data) == unknown
    assert bundle_format.describe(data)["triton_abi"] is None


def test_an_unsafe_abi_is_refused_on_save(tmp_path):
    bad = TritonBundle([], triton_abi="../../x y")
    with pytest.raises(BundleFormatError, match="triton_abi"):
        bad.save(tmp_path / "b.prtb")
    assert not list(tmp_path.iterdir())


def test_bytes_are_deterministic_and_digest_is_stable(kernel_cache):
    cache_dir, _ = kernel_cache
    a, b = collect_dir(cache_dir).to_bytes(), collect_dir(cache_dir).to_bytes()
    assert a == b
    assert TritonBundle.from_bytes(a).content_digest == TritonBundle.from_bytes(b).content_digest


def test_bundle_is_much_smaller_than_its_files(kernel_cache):
    cache_dir, _ = kernel_cache
    bundle = collect_dir(cache_dir)
    assert len(bundle.to_bytes()) < 0.35 * bundle.size


def test_every_backend_reads_what_the_other_wrote(kernel_cache, backend, monkeypatch):
    cache_dir, _ = kernel_cache
    bundle = collect_dir(cache_dir)
    written = {}
    for b in native.backends():
        monkeypatch.setattr(native, "backend", b)
        written[b.name] = bundle.to_bytes()
    monkeypatch.setattr(native, "backend", backend)
    for data in written.values():
        assert TritonBundle.from_bytes(data) == bundle


def test_empty_bundle_round_trips():
    data = TritonBundle([]).to_bytes()
    empty = TritonBundle.from_bytes(data)
    assert empty.kernel_artifacts == [] and empty.targets == []


def test_one_blob_per_kernel_and_any_tiling_reads(kernel_cache):
    """Each kernel is one blob (so put can pack it early); a reader takes
    any table whose ranges tile the blobs, such as pyruntime 0.1.0's, which
    put every kernel's files into one blob grouped by extension."""
    cache_dir, _ = kernel_cache
    bundle = collect_dir(cache_dir)
    entries = pyruntime.packing.unpack(bundle.to_bytes())
    header, table = json.loads(entries[0][1]), json.loads(entries[1][1])
    assert [n for n, _ in entries[2:]] == [f"blob.{i}" for i in range(len(bundle))]
    assert all(f[1] == ki for ki, k in enumerate(table) for f in k["files"])
    # every kernel's files in one shared blob, by extension then kernel
    order = sorted(((os.path.splitext(a.filename)[1], ki, a.filename, bytes(a.payload))
                    for ki, k in enumerate(bundle.kernel_artifacts) for a in k.artifacts))
    blob, where = b"", {}
    for _, ki, name, payload in order:
        where[ki, name] = len(blob)
        blob += payload
    for ki, k in enumerate(table):
        k["files"] = [[name, 0, where[ki, name], size] for name, _, _, size in k["files"]]
    kernels_json = json.dumps(table, separators=(",", ":")).encode()
    header.update(blobs=[len(blob)], content_digest=bundle_format.content_digest(kernels_json, [blob]))
    shared = pyruntime.packing.pack([("header.json", json.dumps(header).encode()), ("kernels.json", kernels_json),
                                     ("blob.0", blob)])
    assert TritonBundle.from_bytes(shared) == bundle


def test_in_memory_bundle_with_unsafe_names_is_refused_on_save(tmp_path):
    for bad in (
        TritonBundle([TritonKernelArtifacts("..", 0, [])]),
        TritonBundle([TritonKernelArtifacts("tmp.x", 0, [])]),
        TritonBundle([TritonKernelArtifacts("K", 0, [TritonKernelArtifact("../x", b"")])]),
        TritonBundle([TritonKernelArtifacts("K", 0, [TritonKernelArtifact("a", b""), TritonKernelArtifact("a", b"")])]),
        TritonBundle([TritonKernelArtifacts("K", 0, []), TritonKernelArtifacts("K", 0, [])]),
        TritonBundle([TritonKernelArtifacts("K", -1, [])]),
    ):
        with pytest.raises(BundleFormatError):
            bad.save(tmp_path / "x.prtb")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# corrupt and hostile bundles


@pytest.fixture(scope="module")
def good_bytes(kernel_cache):
    return collect_dir(kernel_cache[0]).to_bytes()


def test_bit_flips_anywhere_are_detected(good_bytes):
    """Every flipped bit is refused, except where LZ4's encoding is redundant
    (a match offset pointing at identical bytes): those decode to the very
    same content, which the checksums and digest then prove."""
    original = TritonBundle.from_bytes(good_bytes)
    n = len(good_bytes)
    positions = sorted(set(range(0, 256)) | set(range(0, n, max(1, n // 400))) | set(range(n - 64, n)))
    refused = 0
    for pos in positions:
        for bit in (0, 5):
            bad = bytearray(good_bytes)
            bad[pos] ^= 1 << bit
            try:
                got = TritonBundle.from_bytes(bytes(bad))
            except BundleFormatError:
                refused += 1
                continue
            assert got == original and got.content_digest == original.content_digest, (pos, bit)
    assert refused >= 0.95 * 2 * len(positions)


def test_truncation_and_trailing_bytes_are_detected(good_bytes):
    n = len(good_bytes)
    for cut in sorted(set(range(0, 64)) | set(range(0, n, max(1, n // 200))) | {n - 1}):
        with pytest.raises(BundleFormatError):
            TritonBundle.from_bytes(good_bytes[:cut])
    with pytest.raises(BundleFormatError):
        TritonBundle.from_bytes(good_bytes + b"\0")


def _craft(kernels, blobs, header_changes=None) -> bytes:
    """A container with a correct digest around a hand-made kernel table:
    only the bundle's own checks stand between it and the disk."""
    kernels_json = json.dumps(kernels).encode() if not isinstance(kernels, bytes) else kernels
    header = {
        "format": "pyruntime-triton-bundle", "format_version": 1, "pyruntime_version": "0.1.0",
        "triton_version": "3.9.0", "targets": ["cuda:90"],
        "content_digest": bundle_format.content_digest(kernels_json, blobs),
        "blobs": [len(b) for b in blobs],
    }
    header.update(header_changes or {})
    entries = [("header.json", json.dumps(header).encode()), ("kernels.json", kernels_json)]
    entries += [(f"blob.{i}", b) for i, b in enumerate(blobs)]
    return pyruntime.packing.pack(entries)


def _kernel(h="K", files=(("a.cubin", 0, 0, 4),), **kw):
    k = {"hash": h, "device": 0, "target": "cuda:90", "triton_version": "3.9.0", "files": [list(f) for f in files]}
    k.update(kw)
    return k


def test_crafted_bundle_sanity():
    bundle = TritonBundle.from_bytes(_craft([_kernel()], [b"ABCD"]))
    assert bundle.kernel_artifacts[0].artifacts[0].payload == b"ABCD"


def test_tables_off_the_fast_path_still_read(tmp_path):
    """Names the fast path leaves to the item-by-item checks (non-ASCII, or
    spelling a JSON boolean) read the same."""
    kernels = [_kernel("K1", [("true.cubin", 0, 0, 2), ("false.json", 0, 2, 2)]),
               _kernel("K2", [("é.ptx", 1, 0, 4)])]
    bundle = TritonBundle.from_bytes(_craft(kernels, [b"ABCD", b"EFGH"]))
    assert [(a.filename, bytes(a.payload)) for k in bundle.kernel_artifacts for a in k.artifacts] == [
        ("true.cubin", b"AB"), ("false.json", b"CD"), ("é.ptx", b"EFGH")]
    bundle.restore(tmp_path)
    assert _files(tmp_path) == {"K1/true.cubin": b"AB", "K1/false.json": b"CD", "K2/é.ptx": b"EFGH"}


@pytest.mark.parametrize("kernels,blobs,match", [
    ([_kernel(h="../../etc")], [b"ABCD"], "not a plain directory name"),
    ([_kernel(h="/abs")], [b"ABCD"], "not a plain directory name"),
    ([_kernel(h="..")], [b"ABCD"], "not a plain directory name"),
    ([_kernel(h=".hidden")], [b"ABCD"], "not a plain directory name"),
    ([_kernel(h="tmp.pid_1_x")], [b"ABCD"], "not a plain directory name"),
    ([_kernel(h="")], [b"ABCD"], "not a plain directory name"),
    ([_kernel(h=5)], [b"ABCD"], "must be a string"),
    ([_kernel(files=[("../../x", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("sub/x", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("..", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("a\\b", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("a\x00b", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("x\n", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("lock", 0, 0, 4)])], [b"ABCD"], "not a plain file name"),
    ([_kernel(files=[("a", 0, 0, 2), ("a", 0, 2, 2)])], [b"ABCD"], "appears twice"),
    ([_kernel(), _kernel()], [b"ABCDABCD"], "appears twice"),
    ([_kernel(files=[("a", 0, 0, 3), ("b", 0, 2, 2)])], [b"ABCD"], "overlaps"),
    ([_kernel(files=[("a", 0, 0, 1), ("b", 0, 2, 2)])], [b"ABCD"], "gap"),
    ([_kernel(files=[("a", 0, 0, 3)])], [b"ABCD"], "cover 3 of its 4"),
    ([_kernel(files=[("a", 1, 0, 4)])], [b"ABCD"], "does not exist"),
    ([_kernel(files=[("a", 0, 0, -4)])], [b"ABCD"], r"\[name, blob, offset, size\]"),
    ([_kernel(files=[("a", 0, 0, True)])], [b"ABCD"], r"\[name, blob, offset, size\]"),
    ([_kernel(files=[("a", False, 0, 4)])], [b"ABCD"], r"\[name, blob, offset, size\]"),
    ([_kernel(files=[("a", 0, 0, 4.0)])], [b"ABCD"], r"\[name, blob, offset, size\]"),
    ([_kernel(files=[("a", 0, 2**64, 4)])], [b"ABCD"], "gap"),
    ([_kernel(files=[("a", 2**64, 0, 4)])], [b"ABCD"], "does not exist"),
    ([_kernel(files=[("a", 0, 0)])], [b"ABCD"], r"\[name, blob, offset, size\]"),
    ([_kernel(device=-1)], [b"ABCD"], "device"),
    ([_kernel(device="0")], [b"ABCD"], "device"),
    ([_kernel(target="cuda:80")], [b"ABCD"], "targets"),
    ([{**_kernel(), "extra": 1}], [b"ABCD"], "keys"),
    ({"not": "a list"}, [b"ABCD"], "not a list"),
    (b"[" * 100000, [], "not valid JSON"),
    (b'[{"hash":"K","hash":"L","device":0,"target":null,"triton_version":null,"files":[]}]', [], "twice"),
])
def test_hostile_kernel_tables_are_refused(kernels, blobs, match, tmp_path):
    data = _craft(kernels, blobs)
    with pytest.raises(BundleFormatError, match=match):
        TritonBundle.from_bytes(data)
    (tmp_path / "b.prtb").write_bytes(data)
    with pytest.raises(BundleFormatError, match=match):
        load_bundle(tmp_path / "b.prtb")


@pytest.mark.parametrize("changes,match", [
    ({"format": "something-else"}, "not a kernel bundle"),
    ({"format_version": 2}, "format version 2 is not supported"),
    ({"format_version": "1"}, "not an integer"),
    ({"content_digest": "0" * 32}, "digest mismatch"),
    ({"content_digest": "xyz"}, "32 lowercase hex"),
    ({"blobs": [5]}, "holds 4 bytes"),
    ({"blobs": []}, "do not match"),
    ({"targets": "cuda:90"}, "targets"),
    ({"targets": ["cuda:80"]}, "differ"),
    ({"triton_version": 3}, "triton_version"),
    ({"surprise": True}, "unexpected keys"),
    ({"triton_abi": 312}, "triton_abi"),
    ({"triton_abi": "cpython-312/../x"}, "not an ABI tag"),
    ({"triton_abi": ""}, "not an ABI tag"),
])
def test_hostile_headers_are_refused(changes, match):
    with pytest.raises(BundleFormatError, match=match):
        TritonBundle.from_bytes(_craft([_kernel()], [b"ABCD"], changes))


def test_digest_covers_the_kernel_table():
    """A valid container whose kernel table was swapped after the digest was
    made (file names moved between kernels) fails the digest check."""
    kernels = [_kernel("K1", [("a", 0, 0, 2)]), _kernel("K2", [("b", 0, 2, 2)])]
    good = _craft(kernels, [b"ABCD"])
    entries = pyruntime.packing.unpack(good)
    swapped = json.dumps([_kernel("K1", [("a", 0, 2, 2)]), _kernel("K2", [("b", 0, 0, 2)])]).encode()
    entries[1] = ("kernels.json", swapped)
    with pytest.raises(BundleFormatError, match="digest mismatch"):
        TritonBundle.from_bytes(pyruntime.packing.pack(entries))


def test_not_a_bundle():
    with pytest.raises(BundleFormatError, match="bad magic"):
        TritonBundle.from_bytes(b"\x80\x04pickle-ish" * 10)
    with pytest.raises(BundleFormatError, match="not a kernel bundle"):
        TritonBundle.from_bytes(pyruntime.packing.pack([("x", b"y")]))
    with pytest.raises(BundleFormatError, match="not a kernel bundle"):
        TritonBundle.from_bytes(pyruntime.packing.pack([("header.json", b"{}"), ("kernels.json", b"[]")]))


def _big_blobs(n: int = 3, size: int = 200_000) -> list[bytes]:
    """Blobs large enough to be unpacked on more than one thread."""
    return [(os.urandom(500) * (size // 500 + 1))[:size] for _ in range(n)]


def _damage_last_blob(data: bytes) -> bytes:
    """Flip a byte inside the last entry's stored bytes (the container's tail)."""
    out = bytearray(data)
    out[-100] ^= 0x5A
    return bytes(out)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_large_bundles_decode_the_same_on_one_or_more_threads(threads, monkeypatch):
    blobs = _big_blobs()
    kernels = [_kernel(f"K{i}", [("a.cubin", i, 0, 1000), ("b.ptx", i, 1000, len(b) - 1000)])
               for i, b in enumerate(blobs)]
    monkeypatch.setenv("PYRUNTIME_IO_THREADS", threads)
    bundle = TritonBundle.from_bytes(_craft(kernels, blobs))
    got = {(k.kernel_hash, a.filename): bytes(a.payload) for k in bundle.kernel_artifacts for a in k.artifacts}
    assert got == {(f"K{i}", name): part for i, b in enumerate(blobs)
                   for name, part in (("a.cubin", b[:1000]), ("b.ptx", b[1000:]))}


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_damaged_blob_is_the_error_even_when_the_table_is_bad_too(threads, monkeypatch):
    """A damaged container wins over a bad table, whatever the threads; each
    alone is reported as itself."""
    monkeypatch.setenv("PYRUNTIME_IO_THREADS", threads)
    blobs = _big_blobs()
    good = [_kernel(f"K{i}", [("a", i, 0, len(b))]) for i, b in enumerate(blobs)]
    bad = good[:2] + [_kernel("K2", [("../x", 2, 0, len(blobs[2]))])]
    with pytest.raises(BundleFormatError, match="bad bundle container"):
        TritonBundle.from_bytes(_damage_last_blob(_craft(bad, blobs)))
    with pytest.raises(BundleFormatError, match="bad bundle container"):
        TritonBundle.from_bytes(_damage_last_blob(_craft(good, blobs)))
    with pytest.raises(BundleFormatError, match="not a plain file name"):
        TritonBundle.from_bytes(_craft(bad, blobs))


def test_a_collected_bundle_encodes_as_the_same_bundle_built_by_hand(kernel_cache):
    """collect keeps each kernel's table record from its packing thread and
    save joins them: the bytes are those of the same kernels encoded from
    scratch, and kernels.json is the compact JSON of its own content with
    each kernel's blob index in place."""
    collected = collect_dir(kernel_cache[0])
    by_hand = TritonBundle(list(collected.kernel_artifacts), collected.triton_version,
                           triton_abi=collected.triton_abi)
    assert bundle_format._untouched_collect(collected) is not None
    assert bundle_format._untouched_collect(by_hand) is None
    data = collected.to_bytes()
    assert data == by_hand.to_bytes()
    kernels_json = dict(pyruntime.packing.unpack(data))["kernels.json"]
    table = json.loads(kernels_json)
    assert bundle_format._json_bytes(table) == kernels_json
    assert all({f[1] for f in k["files"]} == {i} for i, k in enumerate(table))


def _dist(where, dirname: str, version: str | None = None, metadata: str | None = None) -> None:
    d = where / dirname
    d.mkdir(parents=True)
    text = metadata if metadata is not None else f"Metadata-Version: 2.1\nName: x\nVersion: {version}\n\nbody\n"
    (d / "METADATA").write_text(text)


@pytest.mark.parametrize("layout", ["plain", "shadowed", "pytorch-triton", "nothing", "two in one dir",
                                    "egg-info", "zip on the path", "no version", "upper case"])
def test_the_triton_version_is_found_as_importlib_metadata_finds_it(layout, tmp_path, monkeypatch):
    """installed_triton_version lists sys.path directories instead of
    importing importlib.metadata (tens of milliseconds on a first restore):
    whatever the layout, it gives what importlib.metadata.version gives."""
    from importlib import metadata

    from pyruntime.bundle import compat as b_compat
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    path = [str(a), str(tmp_path / "missing"), str(b)]
    if layout == "plain":
        _dist(b, "triton-3.1.0.dist-info", "3.1.0")
    elif layout == "shadowed":
        _dist(a, "triton-3.2.0.dist-info", "3.2.0")
        _dist(b, "triton-3.1.0.dist-info", "3.1.0")
    elif layout == "pytorch-triton":
        _dist(b, "pytorch_triton-3.0.0+45fff310c8.dist-info", "3.0.0+45fff310c8")
    elif layout == "two in one dir":
        _dist(b, "triton-3.1.0.dist-info", "3.1.0")
        _dist(b, "triton-3.2.0.dist-info", "3.2.0")
    elif layout == "egg-info":
        _dist(b, "triton-3.1.0-py3.11.egg-info", "3.1.0")
    elif layout == "zip on the path":
        import zipfile

        z = tmp_path / "dists.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("triton-3.3.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: triton\nVersion: 3.3.0\n")
        path.insert(0, str(z))
    elif layout == "no version":
        _dist(b, "triton-3.1.0.dist-info", metadata="Metadata-Version: 2.1\nName: triton\n")
    elif layout == "upper case":
        _dist(b, "Triton-3.4.0.dist-info", "3.4.0")
    monkeypatch.setattr(sys, "path", path)
    b_compat.installed_triton_version.cache_clear()
    try:
        try:
            want = metadata.version("triton")
        except metadata.PackageNotFoundError:
            want = b_compat._metadata_version()
        assert b_compat.installed_triton_version() == want
        if layout in ("plain", "shadowed", "pytorch-triton", "nothing", "upper case"):
            assert b_compat._dist_info_version("triton") is not b_compat._UNSURE
    finally:
        b_compat.installed_triton_version.cache_clear()


@pytest.mark.timeout(60)
def test_a_first_restore_in_a_fresh_process_imports_no_importlib_metadata(tmp_path, good_bytes):
    """The launcher case: load and restore once, right after import."""
    (tmp_path / "b.prtb").write_bytes(good_bytes)
    code = ("import sys\nfrom pyruntime.bundle import TritonBundle\n"
            f"r = TritonBundle.load({str(tmp_path / 'b.prtb')!r}).restore({str(tmp_path / 'cache')!r})\n"
            "assert r.restored, r\nprint('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------
# the life cycle


def test_is_enabled_sources(bundler_state, monkeypatch):
    tb = bundler_state
    assert tb.is_enabled() is False  # off by default
    tb.config.enabled = True
    assert tb.is_enabled() is True
    monkeypatch.setenv("PYRUNTIME_BUNDLE", "0")  # the environment wins
    assert tb.is_enabled() is False
    tb.config.enabled = False
    monkeypatch.setenv("PYRUNTIME_BUNDLE", "1")
    assert tb.is_enabled() is True
    tb.config.force_disable = True  # except over force_disable
    assert tb.is_enabled() is False


def test_life_cycle_records_puts_and_collects(bundler_state, kernel_cache, monkeypatch):
    tb = bundler_state
    cache_dir, hashes = kernel_cache
    monkeypatch.setenv("PYRUNTIME_BUNDLE", "1")
    monkeypatch.setenv("TRITON_CACHE_DIR", cache_dir)
    tb.put(hashes[0], 0)  # before begin_compile: ignored
    tb.begin_compile()
    with pytest.raises(RuntimeError, match="begin_compile"):
        tb.begin_compile()
    tb.put(hashes[1], 0)
    tb.put(hashes[0], 0)
    tb.put(hashes[1], 0)  # twice: bundled once
    tb.put("GONE0000", 0)  # its directory is not there: skipped
    assert tb._entries[0] == TritonBundleEntry(hashes[1], 0, cache_dir)
    bundle, meta = tb.collect()
    assert [k.kernel_hash for k in bundle.kernel_artifacts] == [hashes[1], hashes[0]]
    assert isinstance(meta, TritonBundlerMetadata)
    assert meta.cached_kernel_names == bundle.kernel_names() and len(meta.cached_kernel_names) == 2
    assert meta.statically_launched_kernel_names == []
    # collect ended the recording
    tb.put(hashes[2], 0)
    assert tb.collect() == (TritonBundle([]), None)


def test_put_with_explicit_cache_dir(bundler_state, kernel_cache, monkeypatch, tmp_path):
    tb = bundler_state
    cache_dir, hashes = kernel_cache
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # not where the kernels are
    tb.config.enabled = True
    tb.begin_compile()
    tb.put(hashes[3], 0, cache_dir=cache_dir)
    with pytest.raises(BundleFormatError):
        tb.put("../x", 0)
    bundle, _ = tb.collect()
    assert [k.kernel_hash for k in bundle.kernel_artifacts] == [hashes[3]]


def test_disabled_bundler_records_nothing(bundler_state, kernel_cache, monkeypatch):
    tb = bundler_state
    cache_dir, hashes = kernel_cache
    tb.begin_compile()
    tb.put(hashes[0], 0, cache_dir=cache_dir)
    assert tb.collect() == (TritonBundle([]), None)
    assert tb.read_and_emit(collect_dir(cache_dir)) is None


def test_end_compile_drops_the_recording(bundler_state, kernel_cache):
    tb = bundler_state
    cache_dir, hashes = kernel_cache
    tb.config.enabled = True
    tb.begin_compile()
    tb.put(hashes[0], 0, cache_dir=cache_dir)
    tb.end_compile()
    assert tb.collect() == (TritonBundle([]), None)
    tb.begin_compile()  # may start again
    tb.end_compile()


def test_read_and_emit_restores_into_the_triton_cache_dir(bundler_state, kernel_cache, monkeypatch, tmp_path):
    tb = bundler_state
    cache_dir, hashes = kernel_cache
    tb.config.enabled = True
    bundle = collect_dir(cache_dir)
    target = tmp_path / "fresh"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(target))
    meta = tb.read_and_emit(bundle)
    assert sorted(meta.cached_kernel_names) == KERNEL_NAMES
    assert sorted(os.listdir(target)) == sorted(hashes)
    meta = tb.read_and_emit(bundle)  # all present now: nothing written, no names
    assert meta.cached_kernel_names == []


def test_triton_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "c"))
    assert triton_cache_dir(0) == triton_cache_dir(3) == str(tmp_path / "c")
    monkeypatch.delenv("TRITON_CACHE_DIR")
    monkeypatch.setenv("TRITON_HOME", str(tmp_path))
    assert triton_cache_dir(1) == str(tmp_path / ".triton" / "cache")
    monkeypatch.delenv("TRITON_HOME")
    assert triton_cache_dir() == os.path.expanduser("~/.triton/cache")
    # the same directory Triton itself uses
    import triton

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "d"))
    assert triton.knobs.cache.dir == triton_cache_dir(0)


def test_dataclasses_are_frozen():
    a = TritonKernelArtifact("x", b"1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.filename = "y"
    assert "payload" not in repr(a)


# --------------------------------------------------------------------------
# put-time packing: put reads and packs each kernel on a background thread;
# collect reuses that work only while the directory is unchanged


def _put_all(tb, root: str, hashes: list[str]) -> None:
    tb.config.enabled = True
    tb.begin_compile()
    for h in hashes:
        tb.put(h, 0, cache_dir=root)


def _wait_pending(tb) -> dict:
    import concurrent.futures

    pending = dict(tb._pending)
    done, not_done = concurrent.futures.wait(list(pending.values()), timeout=30)
    assert not not_done
    return {h: f.result() for h, f in pending.items()}


@pytest.fixture
def cache_copy(kernel_cache, tmp_path) -> tuple[str, list[str]]:
    cache_dir, hashes = kernel_cache
    root = str(tmp_path / "cache")
    shutil.copytree(cache_dir, root)
    return root, sorted(hashes)


@pytest.mark.timeout(60)
def test_put_packs_each_kernel_and_collect_reuses_it(bundler_state, cache_copy):
    tb = bundler_state
    root, hashes = cache_copy
    try:
        _put_all(tb, root, hashes)
        prepared = _wait_pending(tb)
        assert sorted(prepared) == hashes and all(p is not None for p in prepared.values())
        bundle, meta = tb.collect()
    finally:
        tb.end_compile()
        tb.config.enabled = None
    # the kernels read on put are the ones in the bundle (nothing read twice)
    for k in bundle.kernel_artifacts:
        assert k is prepared[k.kernel_hash].kernel
    fresh = collect_dir(root)
    assert bundle == fresh
    assert bundle.to_bytes() == fresh.to_bytes()
    assert sorted(meta.cached_kernel_names) == KERNEL_NAMES


@pytest.mark.timeout(60)
def test_a_kernel_changed_after_put_is_read_again_on_collect(bundler_state, cache_copy):
    tb = bundler_state
    root, hashes = cache_copy
    changed = hashes[1]
    try:
        _put_all(tb, root, hashes)
        prepared = _wait_pending(tb)
        import time

        time.sleep(0.05)  # so the directory's mtime differs even on a coarse clock
        # a file added the way Triton writes one: a temporary name, then os.replace
        tmp = os.path.join(root, changed, f"late.txt.tmp.pid_{os.getpid()}_1234")
        with open(tmp, "wb") as f:
            f.write(b"written after put")
        os.replace(tmp, os.path.join(root, changed, "late.txt"))
        bundle, _ = tb.collect()
    finally:
        tb.end_compile()
        tb.config.enabled = None
    k = next(k for k in bundle.kernel_artifacts if k.kernel_hash == changed)
    assert k is not prepared[changed].kernel
    assert {a.filename: bytes(a.payload) for a in k.artifacts}["late.txt"] == b"written after put"
    assert all(k is prepared[k.kernel_hash].kernel for k in bundle.kernel_artifacts if k.kernel_hash != changed)
    assert bundle == collect_dir(root)
    assert bundle.to_bytes() == collect_dir(root).to_bytes()


@pytest.mark.timeout(60)
def test_a_kernel_incomplete_at_put_is_bundled_in_full_at_collect(bundler_state, cache_copy, tmp_path):
    tb = bundler_state
    root, hashes = cache_copy
    h = hashes[2]
    grp = next(n for n in os.listdir(os.path.join(root, h)) if n.startswith("__grp__") and n.endswith(".json"))
    aside = str(tmp_path / grp)
    os.rename(os.path.join(root, h, grp), aside)  # Triton writes the __grp__ file last
    try:
        _put_all(tb, root, hashes)
        prepared = _wait_pending(tb)
        assert prepared[h] is None  # not complete yet: left to collect
        os.rename(aside, os.path.join(root, h, grp))
        bundle, _ = tb.collect()
    finally:
        tb.end_compile()
        tb.config.enabled = None
    k = next(k for k in bundle.kernel_artifacts if k.kernel_hash == h)
    assert grp in [a.filename for a in k.artifacts]
    assert bundle == collect_dir(root)
    assert bundle.to_bytes() == collect_dir(root).to_bytes()


def test_pack_on_put_off_submits_nothing(bundler_state, cache_copy):
    tb = bundler_state
    root, hashes = cache_copy
    tb.config.pack_on_put = False
    try:
        _put_all(tb, root, hashes)
        assert tb._pending == {}
        bundle, _ = tb.collect()
    finally:
        tb.config.pack_on_put = True
        tb.end_compile()
        tb.config.enabled = None
    assert bundle == collect_dir(root)
    assert bundle.to_bytes() == collect_dir(root).to_bytes()


@pytest.mark.timeout(60)
def test_collect_in_a_forked_child_reads_every_kernel(bundler_state, cache_copy, monkeypatch):
    """Kernels put in the parent are still being packed on its threads when
    it forks (the bundler's test hook holds them mid-read): the child has
    none of those threads, so it must not wait on their futures; it reads
    the kernels itself. The parent's own collect is unaffected."""
    import signal
    import threading
    import time

    tb = bundler_state
    root, hashes = cache_copy
    want = collect_dir(root).to_bytes()
    parent = os.getpid()
    entered, release = threading.Event(), threading.Event()

    def hold(kernel_hash):
        if os.getpid() == parent:  # only the parent's packing threads wait
            entered.set()
            release.wait(30)

    monkeypatch.setattr(bundler, "_between_passes_hook", hold)
    try:
        _put_all(tb, root, hashes)
        assert entered.wait(30)  # at least one kernel is mid-read on a parent thread
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 3
            try:
                bundle, _ = tb.collect()
                code = 0 if (sorted(k.kernel_hash for k in bundle.kernel_artifacts) == hashes
                             and bundle.to_bytes() == want) else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 45
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("collect in the forked child hung")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        release.set()
        prepared = _wait_pending(tb)
        bundle, _ = tb.collect()
        assert all(k is prepared[k.kernel_hash].kernel for k in bundle.kernel_artifacts)
        assert bundle.to_bytes() == want
    finally:
        release.set()
        tb.end_compile()
        tb.config.enabled = None


def test_a_collected_bundle_changed_after_collect_is_checked_again(kernel_cache):
    """Saving a fresh collect skips re-checking names (collect checked them)
    only while it holds the very kernel and artifact objects collect made."""
    cache_dir, _ = kernel_cache
    fresh = collect_dir(cache_dir)
    k = fresh.kernel_artifacts[0]
    fresh.kernel_artifacts[0] = dataclasses.replace(k, kernel_hash="../evil")
    with pytest.raises(BundleFormatError, match="not a plain directory name"):
        fresh.to_bytes()
    fresh.kernel_artifacts[0] = k
    k.artifacts.append(TritonKernelArtifact("../x", b"1"))
    with pytest.raises(BundleFormatError, match="not a plain file name"):
        fresh.to_bytes()
    k.artifacts.pop()
    assert TritonBundle.from_bytes(fresh.to_bytes()) == collect_dir(cache_dir)


def test_kernel_names_are_stems_of_binaries_as_splitext_sees_them():
    files = [".cubin", "..spv", "a.cubin", "b.hsaco", "c.ptx", "x.y.cubin", "z.zebin", "w.spv", "noext", "k.cubin.json"]
    k = TritonKernelArtifacts("H", 0, [TritonKernelArtifact(f, b"") for f in files])
    want = [os.path.splitext(f)[0] for f in files if os.path.splitext(f)[1] in (".cubin", ".hsaco", ".spv", ".zebin")]
    assert k.kernel_names() == want == ["a", "b", "x.y", "z", "w"]


def test_a_loaded_bundle_changed_after_load_is_checked_again_on_restore(bundle_file_for_checks, tmp_path):
    """Restore skips re-checking a bundle load just checked only while it
    holds the very objects load made."""
    loaded = TritonBundle.load(bundle_file_for_checks)
    k = loaded.kernel_artifacts[0]
    loaded.kernel_artifacts[0] = dataclasses.replace(k, kernel_hash="../evil")
    with pytest.raises(BundleFormatError, match="not a plain directory name"):
        loaded.restore(str(tmp_path / "a"))
    loaded.kernel_artifacts[0] = k
    k.artifacts.append(TritonKernelArtifact("../x", b"1"))
    with pytest.raises(BundleFormatError, match="not a plain file name"):
        loaded.restore(str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() or not os.listdir(tmp_path / "a")
    k.artifacts.pop()
    assert len(loaded.restore(str(tmp_path / "c"), on_mismatch="force").restored) == len(loaded)


def test_a_loaded_bundle_builds_its_kernel_objects_only_when_asked(bundle_file_for_checks, kernel_cache, tmp_path):
    """load+restore needs no kernel or artifact object; the first use of
    kernel_artifacts builds them, once, equal to what was collected."""
    loaded = TritonBundle.load(bundle_file_for_checks)
    result = loaded.restore(str(tmp_path / "a"))
    assert loaded.__dict__["_kernels"] is None  # restore built none
    original = collect_dir(kernel_cache[0])
    assert sorted(result.kernel_names) == sorted(original.kernel_names())
    assert result.files_written == sum(len(k.artifacts) for k in original.kernel_artifacts)
    # several threads asking first all get the one list
    again = TritonBundle.load(bundle_file_for_checks)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda _: again.kernel_artifacts, range(8)))
    assert all(g is got[0] for g in got)
    assert again == loaded == original and len(again) == len(original) and "TritonKernelArtifacts(" in repr(again)
    assert again.kernel_artifacts[0].artifacts[0].payload.readonly
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.kernel_artifacts = []
    # built and untouched, it restores the same files; replace() keeps the objects
    first = _files(tmp_path / "a")
    shutil.rmtree(tmp_path / "a")
    again.restore(str(tmp_path / "a"))
    assert _files(tmp_path / "a") == first and len(first) == result.files_written
    assert dataclasses.replace(again, triton_abi=None).kernel_artifacts is again.kernel_artifacts


@pytest.fixture
def bundle_file_for_checks(kernel_cache, tmp_path):
    path = tmp_path / "k.prtb"
    collect_dir(kernel_cache[0]).save(path)
    return path
