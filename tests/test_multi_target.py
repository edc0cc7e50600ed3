"""Bundles for several targets and Python ABIs, with host code: restore
writes what fits this machine and says what it left out and why; inspect
shows the matrix; merge builds such bundles from one bundle per build."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from pyruntime.bundle import TritonBundle, merge
from pyruntime.bundle.compat import installed_triton_abi, installed_triton_version, local_platform
from pyruntime.bundle.model import TritonKernelArtifact, TritonKernelArtifacts
from pyruntime.cli import main
from pyruntime.errors import BundleFormatError

HERE_ABI = installed_triton_abi()
OTHER_ABI = "cpython-399-x86_64-linux-gnu"
VERSION = installed_triton_version()

pytestmark = pytest.mark.skipif(VERSION is None or HERE_ABI is None, reason="needs an installed Triton")


def _kernel(h: str, target: str, **kw) -> TritonKernelArtifacts:
    meta = json.dumps({"name": h, "dir": "[REPLACE]"}).encode()
    return TritonKernelArtifacts(h, 0, [TritonKernelArtifact(f"{h}.json", meta),
                                        TritonKernelArtifact(f"{h}.cubin", h.encode() * 20)],
                                 target, VERSION, **kw)


def _host(h: str, abi: str, platform: str | None = None) -> TritonKernelArtifacts:
    suffix = abi
    return TritonKernelArtifacts(h, 0, [TritonKernelArtifact(f"cuda_utils.{suffix}.so", b"\x7fELF" + h.encode())],
                                 None, VERSION, "host", abi, platform or local_platform())


@pytest.fixture
def fleet_bundle(tmp_path):
    here = TritonBundle([_kernel("K90A", "cuda:90"), _kernel("K80A", "cuda:80"), _host("HOSTHERE", HERE_ABI)],
                        triton_version=VERSION, triton_abi=HERE_ABI)
    other = TritonBundle([_kernel("K90B", "cuda:90"), _kernel("K80B", "cuda:80"), _host("HOSTOTHER", OTHER_ABI)],
                         triton_version=VERSION, triton_abi=OTHER_ABI)
    path = tmp_path / "fleet.prtb"
    merge([here, other]).save(path)
    return str(path)


def test_merge_keeps_each_entrys_abi_and_round_trips(fleet_bundle):
    b = TritonBundle.load(fleet_bundle)
    by = {k.kernel_hash: k for k in b.kernel_artifacts}
    assert b.triton_abi is None  # mixed
    assert by["K90A"].triton_abi == HERE_ABI and by["K90B"].triton_abi == OTHER_ABI
    assert by["HOSTHERE"].kind == "host" and by["HOSTHERE"].platform == local_platform()
    assert b.targets == ["cuda:80", "cuda:90"]


def test_restore_writes_only_what_fits_and_says_why(fleet_bundle, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what is not for this machine is no mismatch warning
        r = TritonBundle.load(fleet_bundle).restore(tmp_path / "c", target="cuda:90")
    assert sorted(r.restored) == ["HOSTHERE", "K90A"]
    assert sorted(r.skipped) == ["HOSTOTHER", "K80A", "K80B", "K90B"]
    assert "built for cuda:80" in r.skipped["K80A"]
    assert OTHER_ABI in r.skipped["K90B"] and OTHER_ABI in r.skipped["HOSTOTHER"]
    assert not r.incompatible
    assert sorted(os.listdir(tmp_path / "c")) == ["HOSTHERE", "K90A"]


def test_host_code_can_be_turned_off(fleet_bundle, tmp_path, monkeypatch):
    r = TritonBundle.load(fleet_bundle).restore(tmp_path / "a", target="cuda:90", host_code=False)
    assert "HOSTHERE" not in r.restored and r.skipped["HOSTHERE"] == "host code is turned off"
    monkeypatch.setenv("PYRUNTIME_HOST_CODE", "0")
    r = TritonBundle.load(fleet_bundle).restore(tmp_path / "b", target="cuda:90")
    assert "HOSTHERE" not in r.restored
    monkeypatch.setenv("PYRUNTIME_HOST_CODE", "maybe")
    with pytest.raises(ValueError, match="PYRUNTIME_HOST_CODE"):
        TritonBundle.load(fleet_bundle).restore(tmp_path / "c", target="cuda:90")


def test_host_code_for_another_triton_or_platform_is_left_out(tmp_path):
    wrong_version = TritonKernelArtifacts("HOSTV", 0, [TritonKernelArtifact("m.so", b"x")], None, "0.0.1", "host",
                                          HERE_ABI, local_platform())
    wrong_platform = _host("HOSTP", HERE_ABI, "darwin-arm64")
    b = TritonBundle([_kernel("K", "cuda:90"), wrong_version, wrong_platform], triton_version=VERSION,
                     triton_abi=HERE_ABI)
    r = b.restore(tmp_path / "c")
    assert r.restored == ["K"]
    assert "triton 0.0.1" in r.skipped["HOSTV"] and "darwin-arm64" in r.skipped["HOSTP"]


def test_no_variant_fits_is_still_a_mismatch(tmp_path):
    b = TritonBundle([_kernel("K1", "cuda:90"), _kernel("K2", "cuda:80")], triton_version=VERSION,
                     triton_abi=OTHER_ABI)
    with pytest.warns(RuntimeWarning, match="Python ABI"):
        r = b.restore(tmp_path / "c", target="cuda:90")
    assert not r.restored and sorted(r.incompatible) == ["K1", "K2"]


def test_without_a_gpu_every_target_of_this_abi_is_written(fleet_bundle, tmp_path, monkeypatch):
    from pyruntime.bundle import compat

    monkeypatch.delenv("PYRUNTIME_TARGET", raising=False)
    compat.local_target.cache_clear()
    try:
        if compat.local_target() is not None:
            pytest.skip("this machine has a GPU")
        r = TritonBundle.load(fleet_bundle).restore(tmp_path / "c")
    finally:
        compat.local_target.cache_clear()
    assert sorted(r.restored) == ["HOSTHERE", "K80A", "K90A"]
    monkeypatch.setenv("PYRUNTIME_TARGET", "cuda:80")
    try:
        r = TritonBundle.load(fleet_bundle).restore(tmp_path / "d")
    finally:
        compat.local_target.cache_clear()
    assert sorted(r.restored) == ["HOSTHERE", "K80A"]


def test_merge_refuses_one_hash_with_two_contents():
    a = TritonBundle([_kernel("K", "cuda:90")], triton_version=VERSION)
    k = _kernel("K", "cuda:90")
    b = TritonBundle([TritonKernelArtifacts("K", 0, [TritonKernelArtifact("K.json", b"{}")], "cuda:90", VERSION)])
    assert len(merge([a, TritonBundle([k], triton_version=VERSION)])) == 1
    with pytest.raises(BundleFormatError, match="differs between the bundles"):
        merge([a, b])


def test_cli_merge_inspect_and_restore(tmp_path, capsys):
    here = TritonBundle([_kernel("K90A", "cuda:90"), _host("HOSTHERE", HERE_ABI)], triton_version=VERSION,
                        triton_abi=HERE_ABI)
    other = TritonBundle([_kernel("K90B", "cuda:90")], triton_version=VERSION, triton_abi=OTHER_ABI)
    here.save(tmp_path / "a.prtb")
    other.save(tmp_path / "b.prtb")
    out = str(tmp_path / "m.prtb")
    assert main(["bundle", "merge", str(tmp_path / "a.prtb"), str(tmp_path / "b.prtb"), "-o", out]) == 0
    capsys.readouterr()
    assert main(["bundle", "inspect", out]) == 0
    text = capsys.readouterr().out
    assert "entries by target and Python ABI" in text and OTHER_ABI in text and "host code" in text
    assert main(["bundle", "restore", out, "--cache-dir", str(tmp_path / "c"), "--no-host-code"]) == 0
    text = capsys.readouterr().out
    assert "left out 2 entries not for this machine" in text
    assert os.listdir(tmp_path / "c") == ["K90A"]
