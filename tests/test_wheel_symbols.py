"""The release wheel's C core needs nothing newer than its manylinux tag.

A wheel tagged ``manylinux_2_17_x86_64`` promises a loader on glibc 2.17:
every ``GLIBC_x.y`` version its extension asks for must be at most 2.17, its
only shared-library dependencies the ones every glibc system has (liblz4 and
libxxhash are linked in statically, and their symbols are not exported), and
its tags ``cp310-abi3``. These tests read the extension's dynamic symbol
table and version needs with ``readelf`` (binutils).

The wheel checked is ``PYRUNTIME_WHEEL`` or the newest
``dist/pyruntime-*-manylinux*.whl`` (``bash tools/build_wheels.sh`` makes
it, then runs this file on it); without one those tests skip. The dev build
(``pip install -e .``: linked against the system liblz4, libxxhash and this
host's glibc) is only checked for what any build must hold: every symbol it
takes from elsewhere is the Python C API, versioned glibc, or (dev build
only) liblz4/libxxhash.

This file imports nothing from pyruntime, so it runs in the tools venv of
the release build (``pytest --noconftest``) as well as in the suite.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Sonames a manylinux wheel may need without bundling (PEP 599/600 policy,
# as auditwheel lists it); anything else must be linked in.
SYSTEM_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
    "ld-linux-x86-64.so.2", "libgcc_s.so.1", "libutil.so.1",
}
# Undefined symbols a loader may leave unresolved or the toolchain adds weakly.
WEAK_OK = {"__gmon_start__", "_ITM_registerTMCloneTable", "_ITM_deregisterTMCloneTable", "__cxa_finalize"}

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def dynamic_symbols(so: Path) -> list[tuple[str, str, str, str | None]]:
    """(name, bind, ndx, version) of each .dynsym entry; version like 'GLIBC_2.14'."""
    out = []
    for line in _readelf("--dyn-syms", str(so)).splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].rstrip(":").isdigit():
            continue
        name = parts[7]
        version = None
        if "@" in name:
            name, _, version = name.partition("@")
            version = version.lstrip("@")
        out.append((name, parts[4], parts[6], version))
    return out


def needed_versions(so: Path) -> set[str]:
    """Every version name of .gnu.version_r (what the loader checks)."""
    return set(re.findall(r"Name:\s*(\S+)\s+Flags", _readelf("--version-info", str(so))))


def needed_libs(so: Path) -> set[str]:
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf("-d", str(so))))


def glibc_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("_", 1)[1].split("."))


def tag_glibc(wheel_name: str) -> tuple[int, int]:
    """The glibc a wheel's platform tag promises: manylinux_2_17 / manylinux2014 -> (2, 17)."""
    plats = wheel_name[: -len(".whl")].split("-")[-1].split(".")
    found = []
    for plat in plats:
        m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", plat)
        if m:
            found.append((int(m.group(1)), int(m.group(2))))
        legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
        if plat in legacy:
            found.append(legacy[plat])
    assert found, f"{wheel_name}: no manylinux platform tag"
    # Several tags (manylinux2014.manylinux_2_17) must agree; the oldest is the promise.
    return min(found)


def _release_wheel() -> Path | None:
    env = os.environ.get("PYRUNTIME_WHEEL")
    if env:
        return Path(env)
    found = sorted((ROOT / "dist").glob("pyruntime-*-manylinux*.whl"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, list[Path]]:
    whl = _release_wheel()
    if whl is None:
        pytest.skip("no release wheel (bash tools/build_wheels.sh builds dist/pyruntime-*-manylinux*.whl)")
    assert whl.is_file(), f"PYRUNTIME_WHEEL={whl} does not exist"
    dest = tmp_path_factory.mktemp("wheel")
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(dest)
    sos = sorted(p for p in dest.rglob("*.so*") if p.is_file())
    return whl, sos


def test_wheel_tags(wheel):
    whl, sos = wheel
    name, version, python, abi, plat = whl.name[: -len(".whl")].split("-")
    assert (python, abi) == ("cp310", "abi3"), whl.name
    assert tag_glibc(whl.name) <= (2, 28), f"{whl.name}: aim for manylinux_2_17, at most manylinux_2_28"
    # One extension, no libraries grafted in by auditwheel (pyruntime.libs/).
    assert [p.name for p in sos] == ["_c.abi3.so"], sos
    assert sos[0].parent.name == "core" and sos[0].parent.parent.name == "pyruntime"


def test_wheel_glibc_versions_within_tag(wheel):
    whl, sos = wheel
    limit = tag_glibc(whl.name)
    for so in sos:
        versions = needed_versions(so)
        glibc = {v for v in versions if v.startswith("GLIBC_")}
        assert glibc, f"{so.name}: no GLIBC version needs read (readelf output changed?)"
        too_new = sorted(v for v in glibc if glibc_tuple(v)[:2] > limit)
        assert not too_new, f"{whl.name} promises glibc {limit}, {so.name} needs {too_new}"
        others = sorted(v for v in versions if not v.startswith("GLIBC_"))
        assert not others, f"{so.name} needs non-glibc symbol versions {others}"
        for name, bind, ndx, version in dynamic_symbols(so):
            if version and version.startswith("GLIBC_"):
                assert glibc_tuple(version)[:2] <= limit, f"{name}@{version} is newer than {limit}"


def test_wheel_links_only_system_libraries(wheel):
    whl, sos = wheel
    for so in sos:
        libs = needed_libs(so)
        assert libs <= SYSTEM_LIBS, f"{so.name} needs {sorted(libs - SYSTEM_LIBS)}: liblz4/libxxhash must be static"
        assert "libc.so.6" in libs


def test_wheel_undefined_symbols_are_python_or_glibc(wheel):
    """An unversioned undefined symbol that is not the Python C API would be a
    dependency no loader resolves (e.g. a liblz4 function left out of the link)."""
    whl, sos = wheel
    for so in sos:
        stray = sorted(
            name for name, bind, ndx, version in dynamic_symbols(so)
            if ndx == "UND" and name and version is None
            and not name.startswith(("Py", "_Py")) and name not in WEAK_OK
        )
        assert not stray, f"{so.name}: undefined symbols from no library: {stray}"


def test_wheel_exports_no_dependency_symbols(wheel):
    """liblz4/libxxhash are linked in hidden: the module exports only its init."""
    whl, sos = wheel
    for so in sos:
        exported = sorted(
            name for name, bind, ndx, version in dynamic_symbols(so)
            if ndx != "UND" and bind in ("GLOBAL", "WEAK") and name
        )
        assert exported == ["PyInit__c"], f"{so.name} exports {exported[:20]}"


def _dev_extension() -> Path | None:
    found = sorted((ROOT / "pyruntime" / "core").glob("_c*.so"))
    if found:
        return found[0]
    spec = importlib.util.find_spec("pyruntime")  # locates, imports nothing
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found = sorted(Path(loc, "core").glob("_c*.so"))
            if found:
                return found[0]
    return None


def test_dev_build_symbols_resolve():
    so = _dev_extension()
    if so is None:
        pytest.skip("the C core is not built here")
    versions = {v for v in needed_versions(so) if v.startswith("GLIBC_")}
    assert versions, f"{so}: no GLIBC version needs read"
    libs = needed_libs(so)
    dep_libs = {lib for lib in libs if lib.startswith(("liblz4.so", "libxxhash.so"))}
    stray = sorted(
        name for name, bind, ndx, version in dynamic_symbols(so)
        if ndx == "UND" and name and version is None
        and not name.startswith(("Py", "_Py")) and name not in WEAK_OK
        and not (dep_libs and name.startswith(("LZ4", "XXH")))
    )
    assert not stray, f"{so.name}: undefined symbols from no library: {stray}"
    assert libs - dep_libs <= SYSTEM_LIBS, sorted(libs)


@pytest.mark.parametrize("name, expected", [
    ("pyruntime-0.1.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", (2, 17)),
    ("pyruntime-0.1.0-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (2, 17)),
    ("pyruntime-0.1.0-cp310-abi3-manylinux_2_28_x86_64.whl", (2, 28)),
])
def test_tag_glibc(name, expected):
    assert tag_glibc(name) == expected
