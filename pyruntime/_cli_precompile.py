"""``python -m pyruntime precompile KERNELS_FILE``: build a kernel list ahead of time.

::

    python -m pyruntime precompile kernels.toml --target cuda:90 --workers 8 \\
        --cache-dir build/triton-cache [--bundle build/kernels.prtb] [--json results.json]

Reads the kernel-list file (docs/KERNELS.md), builds every kernel in a pool
of workers for the target(s) (``--target`` may be repeated; it replaces the
file's targets), shows progress on stderr (a rewritten line on a terminal,
periodic lines otherwise) and prints a closing summary on stdout: how many
kernels were compiled, found already cached or failed, the wall time, the
sum of per-kernel compile times and the speed-up of the pool over building
them one after another. Failed kernels are listed with Triton's diagnostic.

Fleet scale (:mod:`pyruntime.precompile_report`, :mod:`pyruntime.executors`):
the kernel modules are imported once (in the pool's sidecar, before the
workers fork; the summary shows that time apart from the compile times);
``--executor dask://HOST:PORT`` or ``dask-local:N`` builds on a Dask cluster
and writes the kernels it sends back into the cache; every built kernel is
journaled in the cache as it arrives and a rerun skips what the journal
holds (``--no-resume`` does not); ``--json OUT.jsonl`` streams a line per
kernel; progress shows the rate and an ETA.

Exit status: 0 when every kernel built, 1 when any failed (no bundle is
written then), 2 for bad input (an unreadable or invalid kernel list, an
unknown target, ``local`` on a machine without a GPU, a bad ``--executor``),
130 when Ctrl-C stopped it (what finished is journaled: run it again to
resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Sequence

from .errors import UserError

__all__ = ["register", "run", "format_summary"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "precompile",
        help="build the Triton kernels of a kernel-list file ahead of time",
        description="Build the Triton kernels of a kernel-list file (docs/KERNELS.md) ahead of time, "
                    "in a pool of workers, for a named GPU target; no GPU needed.",
        epilog="Exit status: 0 when every kernel built, 1 when any failed, 2 for bad input.",
    )
    p.add_argument("kernels_file", metavar="KERNELS_FILE", help="kernel list (.toml or .json)")
    p.add_argument("--target", action="append", metavar="TARGET",
                   help="cuda:<sm>, hip:<gfx arch> or local; repeat for several; replaces the file's targets")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: PYRUNTIME_WORKERS or the CPU count)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="Triton cache to build into (default: TRITON_CACHE_DIR or ~/.triton/cache)")
    p.add_argument("--bundle", default=None, metavar="OUT", help="write the built kernels to this bundle file")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="write per-kernel results as JSON at the end; OUT.jsonl streams one line per kernel")
    p.add_argument("--executor", default=None, metavar="WHERE",
                   help="local (the default pool), dask://HOST:PORT (a running Dask scheduler) or dask-local:N "
                        "(a Dask LocalCluster of N processes); Dask needs pip install 'pyruntime[dask]'")
    p.add_argument("--no-resume", action="store_true",
                   help="build every kernel, even those the cache's journal says an earlier run built")
    p.add_argument("--pool", choices=("auto", "subproc", "process"), default="auto",
                   help="worker pool: the project's SubprocPool or a spawn ProcessPoolExecutor (default: auto)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every kernel against its function (imports them) and show what would be built")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per kernel, and tracebacks of failures")
    h = p.add_argument_group("host code", "the launcher stubs and cuda_utils Triton builds with gcc on a GPU "
                             "machine's first launches, built here for that machine (docs/KERNELS.md, Host code)")
    h.add_argument("--host-code", action=argparse.BooleanOptionalAction, default=None,
                   help="build them for CUDA targets (default: yes, with a warning when they cannot be built; "
                        "--host-code makes that an error)")
    h.add_argument("--python", dest="host_python", default=None, metavar="PY",
                   help="the GPU machine's Python: an interpreter with its Triton (a path), or a version (3.12)")
    h.add_argument("--python-abi", dest="host_python_abi", default=None, metavar="TAG",
                   help="find an interpreter with this ABI tag (cpython-312-x86_64-linux-gnu)")
    h.add_argument("--triton-version", dest="host_triton_version", default=None, metavar="X.Y.Z",
                   help="the GPU machine's Triton: when the interpreter has another, use a helper venv with it "
                        "(made once; needs the package index)")
    h.add_argument("--host-triton-dir", default=None, metavar="DIR",
                   help="Triton 3.8+: the GPU machine's triton package directory (part of cuda_utils' key)")
    h.add_argument("--host-libcuda-dir", action="append", default=None, metavar="DIR",
                   help="Triton 3.8+: the GPU machine's libcuda.so.1 directory (part of the key); repeat for several")
    p.set_defaults(handler=run)


def _host_target(args: argparse.Namespace) -> Any:
    """The HostTarget the host-code options name, or None for this Python and Triton."""
    values = (args.host_python, args.host_python_abi, args.host_triton_version, args.host_triton_dir,
              args.host_libcuda_dir)
    if not any(values):
        return None
    if args.host_code is False:
        raise _user_error("--no-host-code with options for the host code")
    if args.host_python and args.host_python_abi:
        raise _user_error("give --python or --python-abi, not both")
    from .host_code import host_target_from_args

    return host_target_from_args(*values)


def _host_summary(results: Sequence[Any], cache_dir: str) -> str | None:
    """One line on the host code precompile built, from the results' host
    directories and the marker in them."""
    from .bundle.collect import HOST_MARKER

    keys = list(dict.fromkeys(k for r in results for k in r.host_keys))
    if not keys:
        return None
    try:
        with open(os.path.join(cache_dir, keys[0], HOST_MARKER), encoding="utf-8") as f:
            info = json.load(f)
        who = f" for {info['triton_abi']} ({info['platform']}), Triton {info['triton_version']}"
        paths = info.get("key_paths")
        if paths:  # Triton 3.8+: the key holds the GPU machine's paths
            triton_dir = os.path.dirname(os.path.dirname(os.path.dirname(paths["include_dirs"][0])))
            who += f"; keyed for Triton at {triton_dir}, libcuda in {', '.join(paths['library_dirs'][1:])}"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        who = ""
    return f"host code: {len(keys)} modules (cuda_utils and launcher stubs){who}"


def _user_error(msg: str) -> Exception:
    return UserError(msg)


def _load_specs(args: argparse.Namespace) -> list[Any]:
    from .kernels import TargetError, load_kernel_list, parse_target

    targets: list[str] = []
    for t in args.target or []:
        try:
            targets.append(str(parse_target(t)))
        except TargetError as e:
            raise _user_error(f"--target: {e}") from None
    specs = load_kernel_list(args.kernels_file)
    if targets:
        specs = [s.with_target(t) for t in dict.fromkeys(targets) for s in specs]
    unique: dict[str, Any] = {}
    for s in specs:
        unique.setdefault(s.key() + "|" + s.target, s)
    if len(unique) < len(specs):
        print(f"precompile: {len(specs) - len(unique)} duplicate kernel entries skipped", file=sys.stderr)
    return list(unique.values())


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def format_summary(results: Sequence[Any], wall_s: float, *, workers: int | None = None,
                   cache_dir: str | None = None, verbose: bool = False, where: str | None = None) -> str:
    """The closing report: optional per-kernel lines, the totals table, then the failures."""
    n = len(results)
    compiled = sum(r.status == "compiled" for r in results)
    cached = sum(r.status == "cached" for r in results)
    failed = [r for r in results if not r.ok]
    kernel_s = sum(r.compile_time_s for r in results)
    targets = ", ".join(dict.fromkeys(r.target for r in results)) or "-"
    out: list[str] = []
    head = f"precompile: {n} kernels for {targets}"
    if where and where != "local":
        head += f", {where}"
    if workers:
        head += f", {workers} workers"
    if cache_dir:
        head += f", cache {cache_dir}"
    out.append(head)
    if verbose and results:
        out.append("")
        width = max(len(r.label) for r in results)
        out.append(f"  {'kernel':<{width}}  {'target':<10}  {'status':<8}  {'time':>8}  cache key")
        for r in results:
            key = (r.cache_key or "-")[:16]
            out.append(f"  {r.label:<{width}}  {r.target:<10}  {r.status:<8}  {r.compile_time_s:>6.3f} s  {key}")
    speedup = f"{kernel_s / wall_s:.2f}x" if wall_s > 0 and kernel_s > 0 else "n/a"
    resumed = sum(bool(getattr(r, "resumed", False)) for r in results)
    rate = f"{(n - resumed) / wall_s:.2f} kernels/s" if wall_s > 0 else "n/a"  # what this run built
    imports = getattr(results, "imports", None)
    rows = [
        ("compiled", f"{compiled}"),
        ("already cached", f"{cached}"),
        *([("of them resumed", f"{resumed}")] if resumed else []),
        ("failed", f"{len(failed)}"),
        ("wall time", f"{wall_s:.2f} s"),
        *([("module imports", f"{sum(m['seconds'] for m in imports):.2f} s")] if imports else []),
        ("sum of kernel times", f"{kernel_s:.2f} s"),
        ("speed-up", speedup),
        ("throughput", rate),
    ]
    out.append("")
    for k, v in rows:
        out.append(f"  {k:<20} {v:>12}")
    from .precompile_report import imports_line  # like .precompile below: only when a command runs

    line = imports_line(imports or [])
    if line:
        out.append(line)
    if failed:
        out.append("")
        out.append(f"failed kernels ({len(failed)}):")
        for r in failed:
            out.append(f"  {r.label} ({r.target})")
            out.append(_indent(r.error or "unknown error"))
            if verbose and r.traceback:
                out.append(_indent(r.traceback, "      "))
    warns = list(dict.fromkeys(w for r in results for w in r.warnings))
    if warns:
        out.append("")
        out.append("triton warnings:")
        out.extend(_indent(w, "  ") for w in warns)
    return "\n".join(out)


def _dry_run(kernels_file: str, specs: Sequence[Any], cache_dir: str, workers: int) -> int:
    """Show what would be built, and check every spec against its function
    as a build would: each name in signature, constexprs, none and
    divisibility is a parameter (with a "did you mean"), every runtime
    argument has a type, every option is the backend's, no divisibility the
    JIT would never give. Exit 2 when any spec is wrong."""
    from .errors import one_line
    from .specialize import check_spec

    functions: dict[str, Any] = {}
    bad = 0
    for s in specs:
        where = s.fn or f"{s.source}:{s.function}"
        print(f"{s.label}  {s.target}  {where}")
        try:
            fn = functions.get(where)
            if fn is None:
                fn = functions[where] = s.load_function()
            for w in check_spec(s, fn):
                print(f"pyruntime: warning: {kernels_file}: {one_line(w)}", file=sys.stderr)
        except Exception as e:
            bad += 1
            print(f"pyruntime: error: {kernels_file}: {s.label} ({s.target}): {one_line(str(e))}", file=sys.stderr)
    if bad:
        print(f"precompile: {bad} of {len(specs)} kernels are wrong (see above); fix them before building")
        return 2
    print(f"precompile: {len(specs)} kernels would be built into {cache_dir} ({workers} workers)")
    return 0


def run(args: argparse.Namespace) -> int:
    from . import config
    from .precompile import default_cache_dir
    from .precompile_report import ScaleProgress, run_build, write_json_report

    if args.workers is not None and args.workers < 1:
        raise _user_error(f"--workers must be at least 1, not {args.workers}")
    specs = _load_specs(args)
    cache_dir = os.path.abspath(args.cache_dir or default_cache_dir())
    workers = args.workers or config.default_workers()
    if args.dry_run:
        return _dry_run(args.kernels_file, specs, cache_dir, workers)
    from .bundle import collect_dir

    collect = collect_dir if args.bundle else None
    if not specs:
        raise _user_error(f"{args.kernels_file}: the kernel list is empty")

    if args.executor and args.workers and not args.executor.strip() == "local":
        raise _user_error("--workers sizes the local pool; a Dask executor has its own workers")
    bar = None if args.quiet else ScaleProgress(sys.stderr)
    host_target = _host_target(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        built = run_build(specs, cache_dir=cache_dir, workers=workers, executor=args.executor,
                          resume=not args.no_resume, json_out=args.json_out, progress=bar, pool_kind=args.pool,
                          host_code=args.host_code, host_target=host_target)
    results = built.results
    for w in caught:  # host code: one line each
        if str(w.message).startswith("pyruntime:"):
            print(f"precompile: warning: {str(w.message)[len('pyruntime: '):]}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    wall = built.wall_s
    print(format_summary(results, wall, workers=built.workers, cache_dir=cache_dir,
                         verbose=args.verbose, where=built.where))
    host_line = _host_summary(results, cache_dir)
    if host_line:
        print(host_line)
    failed = [r for r in results if not r.ok]
    if args.json_out and not args.json_out.endswith(".jsonl"):
        write_json_report(args.json_out, built.summary(cache_dir), results)
    if built.interrupted:
        print(f"\ninterrupted: {len(results)} of {len(specs)} kernels done; the same command resumes "
              f"({built.journal.written} more in the journal {built.journal.path})")
        sys.stdout.flush()
        return 130
    if collect is not None:
        if failed:
            print(f"\nbundle: not written ({len(failed)} kernels failed)")
        else:
            keys = list(dict.fromkeys(r.cache_key for r in results if r.cache_key))
            host = list(dict.fromkeys(k for r in results for k in r.host_keys))
            bundle = collect(cache_dir, keys + host)
            os.makedirs(os.path.dirname(os.path.abspath(args.bundle)), exist_ok=True)
            bundle.save(args.bundle)
            size = os.path.getsize(args.bundle)
            extra = f", with {len(host)} host modules" if host else ""
            print(f"\nbundle: {args.bundle} ({len(keys)} kernels, {size / 1024:.1f} KiB){extra}")
    sys.stdout.flush()
    return 1 if failed else 0
