"""Precompile + bundle + restore round trip of the *installed* pyruntime.

Run by tools/compat_matrix.sh in each fresh (CPython, Triton) venv, from a
directory outside the source tree, so that the wheel under test is what
``import pyruntime`` finds. No GPU: kernels are built for ``cuda:90``.

1. two small @triton.jit kernels (a source file and a kernel list, three
   variants) precompiled with ``python -m pyruntime precompile`` into cache A
   and a bundle (host code too: Triton's launcher modules for this
   interpreter, built with gcc when it can; a warning, not a failure, when
   not);
2. ``bundle inspect`` of it;
3. ``bundle restore --target cuda:90 --on-mismatch error`` into cache B;
4. every kernel directory of A is in B with the same files; every file but
   Triton's group file (which names its own directory) byte-identical.

Prints one JSON line (kernels, host dirs, seconds) and exits 0, or exits 1
saying which step failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

KERNELS = textwrap.dedent(
    """
    import triton
    import triton.language as tl

    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)

    @triton.jit
    def scale_kernel(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * scale, mask=mask)
    """
)

KERNEL_LIST = textwrap.dedent(
    """
    version = 1
    target = "cuda:90"

    [[kernels]]
    name = "add_fp32"
    source = "rt_kernels.py"
    function = "add_kernel"
    signature = { x_ptr = "*fp32", y_ptr = "*fp32", out_ptr = "*fp32", n = "i32" }
    constexprs = { BLOCK = 1024 }
    divisibility = ["x_ptr", "y_ptr", "out_ptr", "n"]

    [[kernels.variants]]
    options = { num_warps = 4 }
    [[kernels.variants]]
    options = { num_warps = 8 }

    [[kernels]]
    name = "scale_fp16"
    source = "rt_kernels.py"
    function = "scale_kernel"
    signature = { x_ptr = "*fp16", out_ptr = "*fp16", n = "i32", scale = "fp32" }
    constexprs = { BLOCK = 512 }
    divisibility = ["x_ptr", "out_ptr"]
    """
)


def run(step: str, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True,
                         env=env, timeout=900)
    if out.returncode != 0:
        sys.exit(f"round trip: {step} failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def kernel_dirs(cache: Path) -> dict[str, Path]:
    """Triton kernel directories (those holding a __grp__ file) by name."""
    return {d.name: d for d in cache.iterdir() if d.is_dir() and any(f.name.startswith("__grp__") for f in d.iterdir())}


def main() -> None:
    import pyruntime
    import pyruntime.core as core
    import triton

    here = Path(pyruntime.__file__).resolve()
    if "site-packages" not in here.parts:
        sys.exit(f"round trip: pyruntime imported from {here}, not from an installed wheel")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prt-rt-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "rt_kernels.py").write_text(KERNELS)
        (tmp_path / "kernels.toml").write_text(KERNEL_LIST)
        a, b, bundle = tmp_path / "cache-a", tmp_path / "cache-b", tmp_path / "kernels.prtb"
        env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "unused"))
        run("precompile", "precompile", str(tmp_path / "kernels.toml"), "--target", "cuda:90", "--workers", "1",
            "--cache-dir", str(a), "--bundle", str(bundle), "-q", env=env)
        built = kernel_dirs(a)
        if len(built) != 3:
            sys.exit(f"round trip: precompile built {len(built)} kernel directories, expected 3")
        inspect = run("bundle inspect", "bundle", "inspect", str(bundle), env=env)
        run("bundle restore", "bundle", "restore", str(bundle), "--cache-dir", str(b), "--target", "cuda:90",
            "--on-mismatch", "error", env=env)
        restored = kernel_dirs(b)
        if set(restored) != set(built):
            sys.exit(f"round trip: restored {sorted(restored)} != built {sorted(built)}")
        for name, src in built.items():
            dst = restored[name]
            src_files = sorted(p.name for p in src.iterdir())
            dst_files = sorted(p.name for p in dst.iterdir())
            if src_files != dst_files:
                sys.exit(f"round trip: {name}: files {dst_files} != {src_files}")
            for f in src_files:
                want, got = (src / f).read_bytes(), (dst / f).read_bytes()
                if f.startswith("__grp__"):  # holds its own directory's path
                    want = want.replace(str(src).encode(), str(dst).encode())
                if want != got:
                    sys.exit(f"round trip: {name}/{f} differs after restore")
        host = [d for d in b.iterdir() if d.is_dir() and d.name not in restored]
    print(json.dumps({
        "ok": True, "kernels": len(built), "other_dirs_restored": len(host), "backend": core.BACKEND,
        "triton": triton.__version__, "python": sys.version.split()[0],
        "bundle_inspect_lines": len(inspect.splitlines()), "seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
