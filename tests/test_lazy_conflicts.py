"""The lazy path (BundleCacheManager) follows restore's rules for a kernel
path held by something that is not a kernel directory: never followed,
never counted as present, replaced atomically by default."""

from __future__ import annotations

import os

import pytest

import hostile_bundles as H
from pyruntime.bundle.lazy import LazyBundle


@pytest.fixture
def bundle_path(tmp_path):
    path = tmp_path / "b.prtb"
    H.small_bundle(2, 2, 100).save(path)
    return str(path)


@pytest.mark.parametrize("blocker", ["file", "fifo", "dangling", "symlink to empty dir", "symlink to file"])
def test_a_blocked_path_is_replaced_never_followed(bundle_path, tmp_path, blocker):
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    final = cache / "KERNEL0000"
    if blocker == "file":
        final.write_bytes(b"junk")
    elif blocker == "fifo":
        os.mkfifo(final)
    elif blocker == "dangling":
        os.symlink(tmp_path / "nowhere", final)
    elif blocker == "symlink to empty dir":
        os.symlink(outside, final)
    else:
        (outside / "f").write_bytes(b"x")
        os.symlink(outside / "f", final)
    with LazyBundle.open(bundle_path, index_dir=tmp_path / "idx") as lb:
        assert lb.materialize("KERNEL0000", cache) is True
    assert final.is_dir() and not final.is_symlink()
    assert sorted(os.listdir(final)) == ["k0.cubin", "k0.f0.ptx", "k0.json"]
    assert os.listdir(outside) in ([], ["f"])  # nothing written through the link


def test_a_kernel_directory_in_place_is_left(bundle_path, tmp_path):
    cache = tmp_path / "cache"
    (cache / "KERNEL0001").mkdir(parents=True)
    (cache / "KERNEL0001" / "mine").write_bytes(b"x")
    with LazyBundle.open(bundle_path, index_dir=tmp_path / "idx") as lb:
        assert lb.materialize("KERNEL0001", cache) is False
    assert os.listdir(cache / "KERNEL0001") == ["mine"]
