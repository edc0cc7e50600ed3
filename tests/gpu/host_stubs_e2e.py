"""On a real GPU: does a bundle with host code make the first launches
compile nothing? Kernels and host code (Triton's launcher stubs and
``cuda_utils``) are built here without a GPU for the GPU machine's Python
and Triton, bundled, restored into an empty Triton cache there, and the
kernels launched with a C compiler that refuses to run.

    # here, no GPU: under the GPU machine's Python and Triton (3.12, 3.6)
    /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/prt312
    /tmp/prt312/bin/pip install triton==3.6.0 cffi xxhash lz4 filelock
    PYTHONPATH=. /tmp/prt312/bin/python tests/gpu/host_stubs_e2e.py build .gpu/host

    # there (Python 3.12, Triton 3.6, torch 2.11, pyruntime importable; no network)
    python3 tests/gpu/host_stubs_e2e.py run .gpu/host/kernels.prtb > host_stubs.json
    python3 tests/gpu/host_stubs_e2e.py baseline .gpu/host/kernels.prtb > baseline.json

``run`` restores the bundle into a new ``TRITON_CACHE_DIR``, puts shims
named ``gcc``, ``cc`` and ``clang`` first on ``PATH`` (and ``CC``) that
record their arguments and exit 1, launches every kernel of
``tests/gpu/e2e.py``'s ``LAUNCHES`` once, checks it against torch, and
reports as JSON: whether any compiler ran (and with what), every cache
entry that appeared (a kernel directory: a JIT compile; a ``.so``: a host
module Triton had to build), the host entries of the bundle and whether
this machine's ``cuda_utils`` key is among them, the first-launch times.
Exit status 0 when no compiler ran, nothing new appeared and every result
is right; 1 otherwise.

``baseline`` is the same in a fresh process without the host code: the
bundle's host entries are removed after the restore and the compiler is
left alone, so the report shows what Triton builds and how long the first
launches take then.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

COMPILERS = ("gcc", "cc", "clang", "g++", "c++", "clang++")


# ------------------------------------------------------------------ build (here)
def build(out_dir: str) -> dict[str, Any]:
    import sysconfig

    import triton
    from e2e import LAUNCHES, spec_for

    from pyruntime import collect_dir
    from pyruntime.precompile import precompile

    cache = os.path.join(os.path.abspath(out_dir), "cache")
    os.makedirs(cache, exist_ok=True)
    specs = [spec_for(la, "cuda:90") for la in LAUNCHES]
    t0 = time.perf_counter()
    results = precompile(specs, workers=2, cache_dir=cache, progress=False, host_code=True)
    wall = time.perf_counter() - t0
    failed = [(r.label, r.error) for r in results if r.error]
    if failed:
        raise SystemExit(f"precompile failed: {failed}")
    kernels = list(dict.fromkeys(r.cache_key for r in results))
    host = list(dict.fromkeys(k for r in results for k in r.host_keys))
    bundle = collect_dir(cache, kernels + host)
    path = os.path.join(out_dir, "kernels.prtb")
    size = bundle.save(path)
    info = {
        "python": sys.version.split()[0], "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "triton": triton.__version__, "kernels": len(kernels), "precompile_wall_s": round(wall, 2),
        "bundle": path, "bundle_bytes": size,
        "host_entries": [{"key": k.kernel_hash, "files": [a.filename for a in k.artifacts], "abi": k.triton_abi,
                          "platform": k.platform, "triton": k.triton_version}
                         for k in bundle.kernel_artifacts if k.kind == "host"],
        "host_keys_per_launch": {r.label: list(r.host_keys) for r in results},
    }
    with open(os.path.join(out_dir, "build.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


# ------------------------------------------------------------------ run (on the GPU machine)
def _shims(root: str, refuse: bool) -> tuple[str, str]:
    """A directory of compiler shims that log their arguments and exit 1
    (``refuse``) or run the real compiler, and the log."""
    import shutil

    d = os.path.join(root, "compiler-shims")
    os.makedirs(d, exist_ok=True)
    log = os.path.join(root, "compiler-runs.log")
    for name in COMPILERS:
        real = shutil.which(name)
        then = "exit 1" if refuse or real is None else f'exec "{real}" "$@"'
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{log}"\n{then}\n')
        os.chmod(p, 0o755)
    return d, log


def _files(cache: str) -> set[str]:
    out = set()
    for dirpath, _dirs, files in os.walk(cache):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), cache))
    return out


def _this_machine() -> dict[str, Any]:
    """What Triton's host-module keys depend on here, and the cuda_utils key it will look up."""
    import base64
    import hashlib
    import sysconfig

    import triton
    from triton.backends.nvidia import driver as nv
    from triton.runtime import build as tb

    info: dict[str, Any] = {"python": sys.version.split()[0], "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
                            "platform": sysconfig.get_platform(), "triton": triton.__version__,
                            "triton_dir": os.path.dirname(os.path.realpath(triton.__file__)),
                            "platform_key": tb.platform_key()}
    try:
        info["libcuda_dirs"] = list(nv.libcuda_dirs())
    except Exception as e:  # noqa: BLE001 - reported
        info["libcuda_dirs"] = f"{type(e).__name__}: {e}"
    if not hasattr(tb, "_get_cache_manager"):  # 3.6, 3.7: sha256(source + platform_key)
        with open(os.path.join(os.path.dirname(os.path.realpath(nv.__file__)), "driver.c")) as f:
            key = hashlib.sha256((f.read() + tb.platform_key()).encode()).hexdigest()
        info["cuda_utils_key"] = base64.b32encode(bytes.fromhex(key)).decode().rstrip("=")
    return info


def run(bundle_path: str, with_host_code: bool = True) -> dict[str, Any]:
    import shutil

    root = tempfile.mkdtemp(prefix="host-stubs-")
    cache = os.path.join(root, "cache")
    os.makedirs(cache)
    real_cc = os.environ.get("CC")
    shim_dir, shim_log = _shims(root, refuse=with_host_code)
    # before anything imports triton: the cache, and compilers that log (and refuse)
    os.environ["TRITON_CACHE_DIR"] = cache
    os.environ["PATH"] = shim_dir + os.pathsep + os.environ.get("PATH", "")
    if with_host_code or not real_cc:
        os.environ["CC"] = os.path.join(shim_dir, "cc")
        os.environ["CXX"] = os.path.join(shim_dir, "c++")

    import inspect

    from pyruntime import TritonBundle

    t0 = time.perf_counter()
    bundle = TritonBundle.load(bundle_path)
    kw: dict[str, Any] = {"cache_dir": cache, "on_mismatch": "error"}
    if "host_code" in inspect.signature(bundle.restore).parameters:
        kw["host_code"] = True
    res = bundle.restore(**kw)
    restore_ms = (time.perf_counter() - t0) * 1e3
    host = [{"key": k.kernel_hash, "files": [a.filename for a in k.artifacts], "abi": k.triton_abi,
             "platform": k.platform, "triton": k.triton_version,
             "restored": all(os.path.isfile(os.path.join(cache, k.kernel_hash, a.filename)) for a in k.artifacts)}
            for k in bundle.kernel_artifacts if getattr(k, "kind", "kernel") == "host"]
    if not with_host_code:
        for h in host:
            shutil.rmtree(os.path.join(cache, h["key"]), ignore_errors=True)
        host = []
    before = _files(cache)

    t1 = time.perf_counter()
    import torch  # noqa: F401 - the launcher's usual state: torch first
    from e2e import LAUNCHES, _launch_one, _refs

    machine = _this_machine()
    import_s = time.perf_counter() - t1
    refs = _refs()
    launches = []
    t2 = time.perf_counter()
    for la in LAUNCHES:
        try:
            launches.append(_launch_one(la, refs))
        except Exception as e:  # noqa: BLE001 - a launch that needed the refused compiler
            launches.append({"label": la.label, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    launch_s = time.perf_counter() - t2

    new = sorted(_files(cache) - before)
    try:
        with open(shim_log) as f:
            runs = [ln.rstrip("\n") for ln in f]
    except FileNotFoundError:
        runs = []
    new_kernel_dirs = sorted({p.split(os.sep)[0] for p in new if p.endswith(".cubin") or "__grp__" in p})
    new_host_modules = [p for p in new if p.endswith(".so")]
    host_keys = {h["key"] for h in host}
    return {
        "mode": "with host code, compiler refused" if with_host_code else "baseline: no host code, compiler allowed",
        "ok": not runs and not new and all(la.get("ok") for la in launches),
        "compiler_ran": bool(runs), "compiler_runs": runs[:20], "compiler_run_count": len(runs),
        "new_cache_files": new[:50], "new_kernel_dirs": new_kernel_dirs, "new_host_modules": new_host_modules,
        "bundle_host_entries": host, "restore_ms": round(restore_ms, 2), "restore_result": repr(res)[:300],
        "this_machine": machine,
        "cuda_utils_key_in_bundle": machine.get("cuda_utils_key") in host_keys if "cuda_utils_key" in machine else None,
        "import_s": round(import_s, 3), "all_first_launches_s": round(launch_s, 3),
        "all_correct": all(la.get("ok") for la in launches), "launches": launches,
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "run", "baseline"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "build":
        print(json.dumps(build(sys.argv[2]), indent=2))
    else:
        out = run(sys.argv[2], with_host_code=sys.argv[1] == "run")
        print(json.dumps(out, indent=2))
        sys.exit(0 if out["ok"] else 1)
