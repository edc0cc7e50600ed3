"""The Triton cache corpus the hashing, packing and bundle suites share.

Built once and reused: a child process compiles the seed kernels of
``_corpus_kernels`` for ``GPUTarget("cuda", 90, 32)`` (no GPU needed) into a
scratch cache, then their directories are replicated under new hash names
until there are ``n`` kernel directories. Each replica gets a fresh 256-bit
hash (SHA-256 of the seed hash and the replica number), its directory is
named the way Triton names it (base32 of the hash), and the ``.json`` files
are fixed up: the metadata's ``"hash"`` and the group file's absolute child
paths point at the replica. The corpus is assembled in a ``tmp.*`` directory
next to its final place and renamed into place, so a half-built corpus is
never reused.

Layout: ``<corpus>/cache/<HASH32>/...`` (a Triton cache directory) and
``<corpus>/corpus.json`` (what is in it). Default location:
``$PYRUNTIME_BENCH_CORPUS`` or ``$XDG_CACHE_HOME/pyruntime/bench-corpus``
(``~/.cache/...``), one subdirectory per Triton version and size.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

CORPUS_FORMAT = 1


def default_base() -> str:
    env = os.environ.get("PYRUNTIME_BENCH_CORPUS")
    if env:
        return env
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "pyruntime", "bench-corpus")


def _triton_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return "none"


def corpus_path(n: int, base: str | None = None) -> str:
    return os.path.join(base or default_base(), f"triton-{_triton_version()}-cuda90-n{n}")


def load_info(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, "corpus.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if info.get("format") != CORPUS_FORMAT:
        return None
    return info


def _base32(hex_hash: str) -> str:
    return base64.b32encode(bytes.fromhex(hex_hash)).decode().rstrip("=")


def compile_seeds(scratch: str, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Compile every seed kernel into ``scratch`` (a Triton cache dir) in a
    child process; returns [{"hash", "dir", "seed"}]."""
    env = dict(os.environ)
    env["TRITON_CACHE_DIR"] = scratch
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    code = ("import json, sys\n"
            "from pyruntime.bench import _corpus_kernels as k\n"
            "print(json.dumps([k.compile_seed(i) for i in range(len(k.SEEDS))]))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
        raise RuntimeError("compiling the corpus seed kernels failed: " + " | ".join(tail))
    hashes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    seeds = []
    for i, h in enumerate(hashes):
        d = _base32(h)
        if not os.path.isdir(os.path.join(scratch, d)):
            raise RuntimeError(f"seed kernel {i} (hash {h}) left no cache directory {d}")
        seeds.append({"hash": h, "dir": d, "seed": i})
    return seeds


def replicate(scratch: str, seeds: list[dict[str, Any]], dest_cache: str, final_cache: str,
              n: int) -> list[dict[str, Any]]:
    """Write ``n`` kernel directories into ``dest_cache``, round-robin over
    the seeds; ``final_cache`` is where ``dest_cache`` will end up (the
    group files hold absolute paths)."""
    os.makedirs(dest_cache, exist_ok=True)
    files: dict[str, list[tuple[str, bytes]]] = {}
    for s in seeds:
        src = os.path.join(scratch, s["dir"])
        files[s["dir"]] = []
        for name in sorted(os.listdir(src)):
            with open(os.path.join(src, name), "rb") as f:
                files[s["dir"]].append((name, f.read()))
    kernels = []
    for i in range(n):
        s = seeds[i % len(seeds)]
        new_hash = hashlib.sha256(f"{s['hash']}:{i}".encode()).hexdigest()
        new_dir = _base32(new_hash)
        old_abs = os.path.join(scratch, s["dir"]).encode()
        new_abs = os.path.join(final_cache, new_dir).encode()
        out = os.path.join(dest_cache, new_dir)
        os.mkdir(out)
        size = 0
        for name, data in files[s["dir"]]:
            if name.endswith(".json"):
                data = (data.replace(old_abs, new_abs)
                        .replace(s["hash"].encode(), new_hash.encode())
                        .replace(s["dir"].encode(), new_dir.encode()))
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
            size += len(data)
        kernels.append({"hash": new_hash, "dir": new_dir, "seed": s["seed"], "bytes": size})
    return kernels


def ensure(n: int = 500, base: str | None = None, progress: Any = None) -> dict[str, Any]:
    """The corpus of ``n`` kernel directories, built if it is not there yet.
    Returns its corpus.json contents plus ``path`` and ``cache``."""
    path = corpus_path(n, base)
    info = load_info(path)
    if info is None:
        if progress is not None:
            progress.step("corpus", f"building {n} kernel directories in {path} (once)")
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(path):  # stale or broken: replace it
            shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix="tmp.", dir=parent)
        try:
            scratch = os.path.join(tmp, "scratch")
            seeds = compile_seeds(scratch)
            compiled = time.perf_counter() - start
            kernels = replicate(scratch, seeds, os.path.join(tmp, "cache"),
                                os.path.join(path, "cache"), n)
            shutil.rmtree(scratch)
            info = {
                "format": CORPUS_FORMAT,
                "triton": _triton_version(),
                "target": "cuda:90",
                "seeds": seeds,
                "kernels": kernels,
                "count": n,
                "bytes": sum(k["bytes"] for k in kernels),
                "files": sum(len(os.listdir(os.path.join(tmp, "cache", k["dir"]))) for k in kernels),
                "seed_compile_s": compiled,
                "build_s": time.perf_counter() - start,
            }
            with open(os.path.join(tmp, "corpus.json"), "w") as f:
                json.dump(info, f, indent=1)
            try:
                os.rename(tmp, path)
            except OSError:
                # someone else finished first: use theirs
                if load_info(path) is None:
                    raise
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        info = load_info(path)
        assert info is not None
    info["path"] = path
    info["cache"] = os.path.join(path, "cache")
    return info


def entries(info: dict[str, Any], limit: int | None = None) -> list[tuple[str, bytes]]:
    """Every file of the first ``limit`` kernels as (flat name, bytes)."""
    out = []
    for k in info["kernels"][:limit]:
        d = os.path.join(info["cache"], k["dir"])
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                out.append((f"{k['dir'][:16]}.{name}", f.read()))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Build (or show) the bench's Triton cache corpus.")
    p.add_argument("-n", type=int, default=500, help="kernel directories (default 500)")
    p.add_argument("--base", help=f"where corpora live (default {default_base()})")
    p.add_argument("--rebuild", action="store_true", help="delete and rebuild it")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("-n must be at least 1")
    path = corpus_path(args.n, args.base)
    if args.rebuild and os.path.exists(path):
        shutil.rmtree(path)
    from ._common import Progress

    info = ensure(args.n, args.base, Progress())
    print(f"{info['cache']}: {info['count']} kernel directories ({len(info['seeds'])} compiled "
          f"seeds, {info['files']} files, {info['bytes'] / 1e6:.1f} MB), triton {info['triton']}, "
          f"target {info['target']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
