"""The side of :mod:`pyruntime.host_code` that runs under the *target*
Python with the *target* Triton: it asks that Triton for its host-side
sources and cache keys, compiles them, and writes them into a Triton cache.

It imports only the standard library and triton, so that it runs under any
interpreter that has Triton installed (a helper venv of another Python
version, say) without pyruntime's dependencies. :mod:`pyruntime.host_code`
runs it as ``python -I _host_worker.py {probe|build} REQUEST REPLY``
(``-I``: neither this directory nor the user's site is on ``sys.path``);
REQUEST and REPLY are JSON files.

What Triton builds with a C compiler on a GPU machine, per version:

* 3.6: ``cuda_utils`` once, and a ``__triton_launcher`` per launch
  signature (``driver.make_launcher``), each through
  ``runtime.build.compile_module_from_src``, keyed by
  ``sha256(source + platform_key())``.
* 3.7: ``cuda_utils`` only, keyed the same way (one launcher for every
  signature lives in ``cuda_utils``).
* 3.8, 3.9: ``cuda_utils`` only, through ``compile_module_from_file``,
  keyed by ``runtime.build._get_cache_manager``: the source, ``platform_key()``
  and the build configuration, which holds the GPU machine's paths (the
  Triton install's ``backends/nvidia/include`` and ``lib``, the libcuda
  directories).

Where Triton has ``compile_so_from_file``/``compile_so_from_src`` (3.8+)
those compute the key, look the file up and write it, and only the C
compiler is ours (``knobs.build.impl``). On 3.6/3.7 the key is the one-line
formula above, over the source Triton generates, with Triton's own
``platform_key`` and ``get_cache_manager``. The file name is Triton's:
``<module><EXT_SUFFIX>`` of this interpreter.

Compiling: the source's includes are Triton's shipped headers
(``backends/nvidia/include``) and this interpreter's Python headers; it is
linked, like Triton does, against ``libcuda.so.1``, here a stub library
with that soname exporting the ``cu*`` symbols the object file needs (built
once per symbol set into the build directory), so the module records
``DT_NEEDED libcuda.so.1`` and the GPU machine's real driver is what the
dynamic loader finds there. Nothing is loaded into this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import traceback

STUB_SONAME = "libcuda.so.1"
#: What a stub ``cu*`` function returns if anything calls it: CUDA_ERROR_NO_DEVICE.
STUB_RETURN = 100


class WorkerError(Exception):
    """A one-line reason the host code could not be built."""


# ------------------------------------------------------------------ the interpreter


def python_include_dirs() -> list[str]:
    """This interpreter's C headers, picked as Triton's own build does
    (the default scheme; Debian's ``posix_local`` read as ``posix_prefix``),
    plus ``platinclude`` where it differs (Debian's multiarch pyconfig.h)."""
    scheme = sysconfig.get_default_scheme() if hasattr(sysconfig, "get_default_scheme") else None
    if scheme == "posix_local":
        scheme = "posix_prefix"
    paths = sysconfig.get_paths(scheme=scheme) if scheme else sysconfig.get_paths()
    dirs = [paths["include"]]
    plat = paths.get("platinclude")
    if plat and plat not in dirs:
        dirs.append(plat)
    return dirs


def abi_tag(ext_suffix: str | None) -> str | None:
    if not ext_suffix:
        return None
    tag = ext_suffix.lstrip(".")
    if tag.endswith(".so"):
        tag = tag[:-3]
    return tag if tag and tag != "so" else None


def probe() -> dict:
    """What the parent needs to know about this interpreter and its Triton."""
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    incs = python_include_dirs()
    out = {
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "ext_suffix": ext,
        "abi": abi_tag(ext),
        "platform": sysconfig.get_platform(),
        "include_dirs": incs,
        "python_h": any(os.path.isfile(os.path.join(d, "Python.h")) for d in incs),
        "multiarch": sysconfig.get_config_var("MULTIARCH"),
    }
    try:
        import triton
        from triton.runtime import build as tb

        out["triton_version"] = triton.__version__
        out["triton_dir"] = os.path.dirname(os.path.realpath(triton.__file__))
        out["platform_key"] = tb.platform_key()
    except Exception as e:  # noqa: BLE001 - reported as data: no triton here
        out["triton_version"] = None
        out["triton_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return out


# ------------------------------------------------------------------ ELF


def _elf_sections(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """``(type, offset, size, link, entsize)`` of each section of a
    little-endian ELF64 file."""
    if data[:4] != b"\x7fELF":
        raise WorkerError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise WorkerError("not a little-endian 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    out = []
    for i in range(shnum):
        base = shoff + i * shentsize
        _name, stype, _flags, _addr, off, size, link, _info, _align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, base)
        out.append((stype, off, size, link, entsize))
    return out


def _cstr(data: bytes, off: int) -> str:
    end = data.index(b"\0", off)
    return data[off:end].decode("utf-8", "replace")


def elf_symbols(path: str, section_type: int) -> list[tuple[str, bool]]:
    """``(name, defined)`` of the symbols in the ``.symtab`` (type 2) or
    ``.dynsym`` (type 11) of an ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    sections = _elf_sections(data)
    out = []
    for stype, off, size, link, entsize in sections:
        if stype != section_type or not entsize:
            continue
        str_off = sections[link][1]
        for i in range(1, size // entsize):
            st_name, _info, _other, shndx, _value, _size = struct.unpack_from("<IBBHQQ", data, off + i * entsize)
            if st_name:
                out.append((_cstr(data, str_off + st_name), shndx != 0))
    return out


def elf_dynamic(path: str) -> dict[str, list[str]]:
    """``{"needed": [...], "soname": [...], "rpath": [...]}`` from an ELF
    file's dynamic section."""
    with open(path, "rb") as f:
        data = f.read()
    sections = _elf_sections(data)
    tags = {1: "needed", 14: "soname", 15: "rpath", 29: "rpath"}
    out: dict[str, list[str]] = {"needed": [], "soname": [], "rpath": []}
    for stype, off, size, link, _entsize in sections:
        if stype != 6:  # SHT_DYNAMIC
            continue
        str_off = sections[link][1]
        for i in range(size // 16):
            tag, val = struct.unpack_from("<qQ", data, off + i * 16)
            if tag == 0:
                break
            if tag in tags:
                out[tags[tag]].append(_cstr(data, str_off + val))
    return out


def glibc_required(path: str) -> str | None:
    """The newest ``GLIBC_x.y`` symbol version an ELF file asks for."""
    with open(path, "rb") as f:
        data = f.read()
    found = {tuple(int(p) for p in m.group(1).split(b".")) for m in re.finditer(rb"GLIBC_([0-9]+(?:\.[0-9]+)+)\0", data)}
    return "GLIBC_" + ".".join(map(str, max(found))) if found else None


# ------------------------------------------------------------------ compiling


def find_cc(cc: str | None) -> str:
    """The C compiler: ``cc`` when given, else ``$CC``, else gcc, else clang
    (the order Triton uses)."""
    cc = cc or os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise WorkerError("no C compiler: install gcc (or clang), or name one with CC")
    return cc


def _run(cmd: list[str], what: str) -> None:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if p.returncode != 0:
        out = p.stdout.decode("utf-8", "replace").strip().splitlines()
        first = next((ln for ln in out if "error" in ln), out[0] if out else "")
        raise WorkerError(f"{what} failed (exit {p.returncode}): {first[:300]}")


def driver_api(cc: str, include_dirs: list[str]) -> set[str]:
    """Every function the ``cuda.h`` in ``include_dirs`` declares, by the
    symbol name it links to (preprocessed: ``cuMemAlloc`` is ``cuMemAlloc_v2``)."""
    p = subprocess.run([cc, "-E", "-P", "-x", "c", "-", *[f"-I{d}" for d in include_dirs]],
                       input=b'#include "cuda.h"\n', capture_output=True, check=False)
    if p.returncode != 0:
        raise WorkerError(f"preprocessing Triton's cuda.h failed: {p.stderr.decode('utf-8', 'replace')[:200]}")
    return set(re.findall(r"\bCUresult\s+(cu[A-Za-z0-9_]+)\s*\(", p.stdout.decode("utf-8", "replace")))


def ensure_stub(build_dir: str, symbols: set[str] | list[str], cc: str) -> str:
    """A directory holding a stub ``libcuda.so.1`` (soname ``libcuda.so.1``)
    that exports ``symbols``, each returning :data:`STUB_RETURN`; built once
    per symbol set (the directory name carries its digest)."""
    names = sorted(set(symbols))
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    final = os.path.join(build_dir, f"libcuda-stub-{digest}")
    if os.path.isfile(os.path.join(final, STUB_SONAME)):
        return final
    os.makedirs(build_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="tmp.stub.", dir=build_dir)
    try:
        src = os.path.join(tmp, "libcuda_stub.c")
        with open(src, "w") as f:
            f.write("/* Link-time stand-in for the CUDA driver (generated by pyruntime): exports the\n"
                    "   symbols Triton's host modules use, under the driver's soname. Never loaded on a\n"
                    "   GPU machine, where the real libcuda.so.1 is found instead. */\n")
            for n in names:
                f.write(f"int {n}(void) {{ return {STUB_RETURN}; }}\n")
        _run([cc, src, "-O2", "-shared", "-fPIC", f"-Wl,-soname,{STUB_SONAME}", "-o",
              os.path.join(tmp, STUB_SONAME)], "building the stub libcuda.so.1")
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, STUB_SONAME)):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _library_flag(lib: str) -> str:
    # a file name (libcuda.so.1) is linked by name, a bare name with -l
    return f"-l:{lib}" if re.search(r"\.so(\.\d+)*$", lib) or lib.endswith(".a") else f"-l{lib}"


class Builder:
    """Triton's ``knobs.build.impl``: compiles one module the way Triton's
    own build does, but with the headers of this Triton install where the
    key names the GPU machine's, and against the stub ``libcuda.so.1``."""

    def __init__(self, build_dir: str, cc: str, path_map: dict[str, str], extra_includes: list[str]) -> None:
        self.build_dir = build_dir
        self.cc = cc
        self.path_map = path_map  # GPU machine's path prefix -> this machine's
        self.extra_includes = extra_includes
        self.ext_suffix = sysconfig.get_config_var("EXT_SUFFIX")
        self.built: list[str] = []
        self.stubs: list[str] = []
        self._api: set[str] | None = None

    def _local(self, d: str) -> str:
        for remote, local in self.path_map.items():
            if d == remote or d.startswith(remote + os.sep):
                return local + d[len(remote):]
        return d

    def __call__(self, name: str, src: str, srcdir: str, library_dirs: list[str], include_dirs: list[str],
                 libraries: list[str]) -> str:
        base_incs = [self._local(d) for d in include_dirs if d]
        py_incs = python_include_dirs()
        incs = [*base_incs, srcdir, *py_incs, *self.extra_includes]
        so = os.path.join(srcdir, f"{name}{self.ext_suffix}")
        # A module already compiled from the same source with the same
        # headers and compiler (into another cache, say) is copied.
        with open(src, "rb") as f:
            memo = hashlib.sha256(f.read())
        memo.update(json.dumps([name, self.ext_suffix, self.cc, base_incs, py_incs, self.extra_includes,
                                libraries]).encode())
        kept = os.path.join(self.build_dir, "modules", memo.hexdigest()[:32], os.path.basename(so))
        if os.path.isfile(kept):
            shutil.copyfile(kept, so)
            self.built.append(name)
            return so
        obj = os.path.join(srcdir, f"{name}.o")
        _run([self.cc, "-c", src, "-O3", "-fPIC", "-Wno-psabi", "-o", obj, *[f"-I{d}" for d in incs]],
             f"compiling {name}")
        needs = {n for n, defined in elf_symbols(obj, 2) if not defined and n.startswith("cu")}
        if self._api is None:
            # one stub for every module: the whole driver API of these headers
            self._api = driver_api(self.cc, [self._local(d) for d in include_dirs if d])
        stub = ensure_stub(self.build_dir, self._api | needs, self.cc)
        if stub not in self.stubs:
            self.stubs.append(stub)
        _run([self.cc, obj, "-O3", "-shared", "-fPIC", "-o", so, *[_library_flag(lib) for lib in libraries],
              f"-L{stub}"], f"linking {name}")
        if STUB_SONAME in libraries and STUB_SONAME not in elf_dynamic(so)["needed"]:
            raise WorkerError(f"linking {name}: the module does not record DT_NEEDED {STUB_SONAME}")
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        with open(so, "rb") as f:
            _atomic_write(kept, f.read())
        self.built.append(name)
        return so


# ------------------------------------------------------------------ building


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="tmp.pyruntime.", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def build(req: dict) -> dict:
    """Build ``cuda_utils`` and, where this Triton has per-signature
    launchers, one ``__triton_launcher`` per distinct launcher source, into
    ``req["cache_dir"]`` (``TRITON_CACHE_DIR`` is set by the caller)."""
    import triton
    from triton import knobs
    from triton.backends.nvidia import driver as nv
    from triton.runtime import build as tb

    info = probe()
    if not info["python_h"]:
        raise WorkerError(f"no Python.h in {', '.join(info['include_dirs'])}: install the C headers of "
                          f"{sys.executable} (Debian/Ubuntu: the python{sys.version_info[0]}.{sys.version_info[1]}-dev package)")
    cache_dir = os.environ.get("TRITON_CACHE_DIR")
    if not cache_dir or os.path.realpath(cache_dir) != os.path.realpath(req["cache_dir"]):
        raise WorkerError("TRITON_CACHE_DIR is not the cache directory asked for")
    build_dir = req["build_dir"]
    cc = find_cc(req.get("cc"))

    # The paths Triton's key (3.8+) holds: this install's, or the GPU machine's when given.
    local_nv = os.path.dirname(os.path.realpath(nv.__file__))
    triton_dir = req.get("triton_dir")
    remote_nv = os.path.join(triton_dir, "backends", "nvidia") if triton_dir else local_nv
    libcuda_dirs = req.get("libcuda_dirs") or None
    assumed = []
    if libcuda_dirs is None:
        try:
            libcuda_dirs = list(nv.libcuda_dirs())  # TRITON_LIBCUDA_PATH, else ldconfig: this machine's
        except Exception:  # noqa: BLE001 - no driver here: the usual place on the GPU machine
            multiarch = info.get("multiarch") or "x86_64-linux-gnu"
            libcuda_dirs = [f"/lib/{multiarch}"]
            assumed.append("libcuda_dirs")
    if triton_dir is None:
        assumed.append("triton_dir")

    def remote(p: str) -> str:
        return remote_nv + p[len(local_nv):] if p == local_nv or p.startswith(local_nv + os.sep) else p

    include_dirs = [remote(d) for d in nv.include_dirs]
    library_dirs = [remote(nv.libdevice_dir), *libcuda_dirs]
    libraries = list(nv.libraries)
    extra_includes = sorted(getattr(knobs.build, "backend_dirs", None) or [])
    builder = Builder(build_dir, cc, {remote_nv: local_nv} if remote_nv != local_nv else {}, extra_includes)
    knobs.build.impl = builder
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    per_file = hasattr(tb, "compile_so_from_file")  # 3.8+: Triton keys, looks up and writes
    key_scheme = "sha256(source, platform_key, build config)" if per_file else "sha256(source + platform_key)"

    def put(name: str, source: str | None, source_path: str | None) -> tuple[str, bool]:
        before = len(builder.built)
        if per_file:
            kw = dict(library_dirs=library_dirs, include_dirs=include_dirs, libraries=libraries)
            if source_path is not None:
                path = tb.compile_so_from_file(source_path, name, **kw)
            else:
                path = tb.compile_so_from_src(source, name, **kw)
        else:
            if source is None:
                with open(source_path, encoding="utf-8") as f:
                    source = f.read()
            key = hashlib.sha256((source + tb.platform_key()).encode("utf-8")).hexdigest()
            cache = tb.get_cache_manager(key)
            fname = f"{name}{ext}"
            path = cache.get_file(fname)
            if path is None:
                with tempfile.TemporaryDirectory() as tmp:
                    src_path = os.path.join(tmp, f"{name}.c")
                    with open(src_path, "w", encoding="utf-8") as f:
                        f.write(source)
                    so = builder(name, src_path, tmp, library_dirs, include_dirs, libraries)
                    with open(so, "rb") as f:
                        path = cache.put(f.read(), fname, binary=True)
        return path, len(builder.built) > before

    def mark(path: str, name: str, source: str | None) -> dict:
        dyn = elf_dynamic(path)
        exports = {n for n, defined in elf_symbols(path, 11) if defined}
        if f"PyInit_{name}" not in exports:
            raise WorkerError(f"{path}: exports no PyInit_{name}")
        marker = {
            "format": 1,
            "kind": "host",
            "module": name,
            "file": os.path.basename(path),
            "triton_version": triton.__version__,
            "triton_abi": info["abi"],
            "platform": info["platform"],
            "python_version": info["python_version"],
            "platform_key": info.get("platform_key"),
            "key_scheme": key_scheme,
            "source_sha256": hashlib.sha256(source.encode("utf-8")).hexdigest() if source is not None else None,
            "key_paths": {"include_dirs": include_dirs, "library_dirs": library_dirs} if per_file else None,
            "needed": dyn["needed"],
            "glibc": glibc_required(path),
            "built_by": req.get("built_by"),
        }
        data = (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode()
        mpath = os.path.join(os.path.dirname(path), req["marker"])
        try:
            with open(mpath, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        if not same:
            _atomic_write(mpath, data)
        return marker

    modules = []
    driver_c = os.path.join(local_nv, "driver.c")
    with open(driver_c, encoding="utf-8") as f:
        driver_src = f.read()
    path, built = put("cuda_utils", None if per_file else driver_src, driver_c)
    m = mark(path, "cuda_utils", driver_src)
    modules.append({"module": "cuda_utils", "key": os.path.basename(os.path.dirname(path)), "file": m["file"],
                    "built": built, "kernels": [], "glibc": m["glibc"], "needed": m["needed"]})

    per_signature = hasattr(nv, "make_launcher")  # 3.6
    by_key: dict[str, dict] = {}
    for item in req.get("launchers", []) if per_signature else []:
        signature = {k: _as_type(v) for k, v in item["signature"].items()}
        source = nv.make_launcher({}, signature, item.get("tensordesc_meta"))
        path, built = put("__triton_launcher", source, None)
        key = os.path.basename(os.path.dirname(path))
        if key not in by_key:
            m = mark(path, "__triton_launcher", source)
            by_key[key] = {"module": "__triton_launcher", "key": key, "file": m["file"], "built": built,
                           "kernels": [], "glibc": m["glibc"], "needed": m["needed"]}
        by_key[key]["kernels"].extend(item["kernels"])
    modules.extend(by_key.values())
    return {"modules": modules, "per_signature": per_signature, "key_scheme": key_scheme,
            "assumed": assumed if per_file else [], "key_paths": {"triton_dir": os.path.dirname(os.path.dirname(remote_nv)),
                                                                  "libcuda_dirs": libcuda_dirs},
            "cc": cc, "stub_dirs": builder.stubs, **info}


def _as_type(v: object) -> object:
    # JSON has no tuples: a tuple argument's types come back as lists
    return tuple(_as_type(x) for x in v) if isinstance(v, list) else v


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in ("probe", "build"):
        print("usage: _host_worker.py {probe|build} REQUEST.json REPLY.json", file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        req = json.load(f)
    try:
        reply = probe() if argv[1] == "probe" else build(req)
        code = 0
    except WorkerError as e:
        reply, code = {"error": str(e)}, 1
    except Exception as e:  # noqa: BLE001 - one line to the parent, the traceback on stderr
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        reply, code = {"error": f"{type(e).__name__}: {first}"[:500]}, 1
    tmp = argv[3] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(reply, f)
    os.replace(tmp, argv[3])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
