"""cffi build script for pyruntime's C core (out-of-line API mode).

Imported by setup.py through ``cffi_modules=["csrc/build_ffi.py:ffibuilder"]``;
it never imports :mod:`pyruntime`. Environment knobs read at build time:

``PYRUNTIME_SANITIZE=1`` (or ``thread``)
    compile with ``-fsanitize=address,undefined`` (or ``-fsanitize=thread``);
    tests only: the module then needs libasan (libtsan) preloaded.
``PYRUNTIME_STATIC_DEPS=1``
    link liblz4 and libxxhash statically (self-contained wheels).
``PYRUNTIME_DEPS_PREFIX=DIR``
    release builds (tools/build_wheels.sh): take ``lz4.h`` and ``xxhash.h``
    from ``DIR/include`` and link the static archives ``DIR/lib/liblz4.a`` and
    ``DIR/lib/libxxhash.a`` (built there from pinned upstream sources for an
    old glibc) instead of the system libraries; pkg-config is not asked.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["core.c", "framing.c", "hashing.c", "packing.c", "kernel_dirs.c", "bundle_table.c", "parallel.c", "xxh_avx2.c"]
DEPS = {
    # pkg-config name: (header, Debian package, Fedora package)
    "liblz4": ("lz4.h", "liblz4-dev", "lz4-devel"),
    "libxxhash": ("xxhash.h", "libxxhash-dev", "xxhash-devel"),
}


def _pkg_config(*args: str) -> list[str] | None:
    if shutil.which("pkg-config") is None:
        return None
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError:
        return None
    return shlex.split(out.stdout)


def _header_present(header: str, include_dirs: list[str]) -> bool:
    dirs = include_dirs + ["/usr/include", "/usr/local/include"]
    return any(Path(d, header).is_file() for d in dirs)


def _find_deps() -> tuple[list[str], list[str], list[str]]:
    """Include dirs, libraries and extra link args; exits with a message naming
    the packages to install when a header is missing."""
    include_dirs: list[str] = []
    libraries: list[str] = []
    missing = []
    for name, (header, deb, rpm) in DEPS.items():
        cflags = _pkg_config("--cflags-only-I", name) or []
        incs = [f[2:] for f in cflags if f.startswith("-I")]
        if not _header_present(header, incs):
            missing.append(f"{header} (Debian/Ubuntu: {deb}; Fedora: {rpm})")
            continue
        include_dirs += incs
        libraries.append(name[3:])
    if missing:
        sys.exit(
            "pyruntime: cannot build the C core, missing headers: "
            + "; ".join(missing)
            + ".\nInstall them, e.g. `sudo apt-get install liblz4-dev libxxhash-dev`, "
            "or install with PYRUNTIME_PURE_PYTHON=1 set at run time to use the pure-Python twin."
        )
    extra_link: list[str] = []
    if os.environ.get("PYRUNTIME_STATIC_DEPS") == "1":
        # -l:libfoo.a picks the static archive from the system -dev package.
        extra_link = ["-Wl,-Bstatic"] + [f"-l{lib}" for lib in libraries] + ["-Wl,-Bdynamic"]
        libraries = []
    return include_dirs, libraries, extra_link


def _prefix_deps(prefix: str) -> tuple[list[str], list[str]]:
    """Include dirs and static archives of a release build's dependency prefix."""
    root = Path(prefix).resolve()
    archives = [root / "lib" / f"{name}.a" for name in DEPS]
    missing = [str(p) for p in [root / "include" / h for h, _, _ in DEPS.values()] + archives if not p.is_file()]
    if missing:
        sys.exit("pyruntime: PYRUNTIME_DEPS_PREFIX=%s lacks %s (tools/build_wheels.sh builds them)" % (prefix, ", ".join(missing)))
    return [str(root / "include")], [str(p) for p in archives]


def _cdef_text() -> str:
    return (HERE / "prt_core.cdef.h").read_text()


def _make_builder() -> FFI:
    extra_objects: list[str] = []
    prefix = os.environ.get("PYRUNTIME_DEPS_PREFIX", "")
    if prefix:
        include_dirs, extra_objects = _prefix_deps(prefix)
        libraries, extra_link = [], []
    else:
        include_dirs, libraries, extra_link = _find_deps()
    cflags = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-fvisibility=hidden", "-pthread"]
    ldflags = list(extra_link) + ["-pthread"]
    sanitize = os.environ.get("PYRUNTIME_SANITIZE", "")
    if sanitize in ("1", "thread"):
        san = (["-fsanitize=thread"] if sanitize == "thread" else
               ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]) + ["-fno-omit-frame-pointer"]
        cflags = [f for f in cflags if f != "-O2"] + ["-O1", "-g"] + san
        ldflags += san
    ffi = FFI()
    ffi.cdef(_cdef_text())
    ffi.set_source(
        "pyruntime.core._c",
        '#include "prt_core.h"\n',
        sources=[str(Path("csrc", s)) for s in SOURCES],
        include_dirs=[str(HERE)] + include_dirs,
        libraries=libraries,
        extra_objects=extra_objects,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        py_limited_api=True,
    )
    return ffi


ffibuilder = _make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
