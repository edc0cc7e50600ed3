"""``python -m pyruntime.bench``: every hot path measured side by side with
its peers, in one run, on the same data.

Suites (``--suite NAME``, repeatable or comma separated; all by default):

- framing: frames/s for 64-byte and GB/s for 1 MiB frames through a pipe,
  C backend vs the pure-Python twin.
- pool: start-up (construction to first result), no-op round-trip p50/p99,
  jobs/s, 1 MiB payload round trips; pyruntime's SubprocPool vs torch's
  SubprocPool vs concurrent.futures.ProcessPoolExecutor, 2 workers each.
- hashing: hash_dir over a Triton cache of >= 500 kernel directories (C vs
  twin); hash_bytes GB/s vs the xxhash package directly.
- packing: pack/unpack GB/s, C vs twin vs lz4.frame vs lz4.block (the raw
  liblz4 reference with the settings the C core uses).
- bundle: collect+save and load+restore vs torch's TritonBundler
  (collect+pickle, pickle.loads+read_and_emit); file sizes; restore of a
  500-kernel bundle into an empty cache.
- compile: N distinct kernels for cuda:90 with W = 1..cores workers through
  the pool vs ProcessPoolExecutor.map of the same compile function.
- store: lazy restore through Triton's cache-manager hook (process ready,
  first lookup) vs load+restore of the whole bundle; ``store pull`` from a
  local S3-compatible server (and redis) vs reading the file + restore; 50
  processes pulling one bundle at once (servers started on loopback ports;
  n/a with the reason when they are not installed).

The Triton cache corpus is built once (see bench/make_corpus.py) and reused.
A peer that is not installed shows "n/a"; a suite whose modules are missing
reports "n/a (module missing)"; a suite that fails reports "error" and the
run goes on. ``--json FILE`` keeps every figure (``--markdown FILE`` a
summary), and plots go next to the JSON when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shlex
import sys
import time
import traceback
from typing import Any, Sequence

from . import _common as C
from . import _report as R

SUITES = ("framing", "pool", "hashing", "packing", "bundle", "compile", "store")


def _suite_list(values: Sequence[str] | None) -> list[str]:
    if not values:
        return list(SUITES)
    names: list[str] = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if not name:
                continue
            if name == "all":
                names.extend(SUITES)
                continue
            if name not in SUITES:
                raise SystemExit(f"pyruntime.bench: unknown suite {name!r} "
                                 f"(choose from {', '.join(SUITES)})")
            names.append(name)
    return list(dict.fromkeys(names))


def _int_list(text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyruntime.bench",
                                description="Measure every pyruntime hot path side by side with "
                                "its peers, in one run, on the same data.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", metavar="NAME",
                   help=f"suite(s) to run: {', '.join(SUITES)} (repeatable or comma list; default all)")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, shorter rounds, fewer kernels (ends within ~60 s on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE (plots go next to it)")
    p.add_argument("--markdown", metavar="FILE", help="write a markdown summary to FILE")
    p.add_argument("--rounds", type=int, help="rounds per figure (default 5, quick 3)")
    p.add_argument("--round-time", type=float, help="seconds per throughput round (default 0.3)")
    p.add_argument("--pool-rounds", type=int, help="fresh pools per peer (default 5, quick 1)")
    p.add_argument("--kernels", type=int, dest="compile_kernels",
                   help="distinct kernels in the compile suite (default 48, quick 8)")
    p.add_argument("--compile-rounds", type=int, help="rounds of the compile suite (default 5, quick 1)")
    p.add_argument("--workers", type=_int_list, dest="compile_workers", metavar="LIST",
                   help="worker counts for the compile suite, e.g. 1,2 (default 1..cores)")
    p.add_argument("--corpus-dir", metavar="DIR",
                   help="where the Triton cache corpora live (one is built there on first use; "
                   "default $PYRUNTIME_BENCH_CORPUS or ~/.cache/pyruntime/bench-corpus)")
    p.add_argument("--corpus-kernels", type=int, help="kernel directories in the corpus (default 500)")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    p.add_argument("--no-plots", action="store_true", help="do not write plots next to the JSON")
    p.add_argument("--date", help="date stamped into the results (default: today)")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: re-render FILE's tables (and --markdown, plots next to FILE)")
    return p


def run_suite(name: str, settings: C.Settings) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        mod = importlib.import_module(f"pyruntime.bench._{name}")
        res = mod.run(settings)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one broken suite must not sink the run
        tb = traceback.format_exc(limit=4)
        res = C.suite_result(name, method="", metrics=[], status="error",
                             reason=f"{type(e).__name__}: {e}")
        res["extra"]["traceback"] = tb
    res["seconds"] = time.perf_counter() - start
    return res


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        return _rerender(args)
    names = _suite_list(args.suite)
    for flag, value in (("--rounds", args.rounds), ("--pool-rounds", args.pool_rounds),
                        ("--kernels", args.compile_kernels), ("--compile-rounds", args.compile_rounds),
                        ("--corpus-kernels", args.corpus_kernels)):
        if value is not None and value < 1:
            raise SystemExit(f"pyruntime.bench: {flag} must be at least 1, got {value}")
    if args.round_time is not None and args.round_time <= 0:
        raise SystemExit(f"pyruntime.bench: --round-time must be positive, got {args.round_time}")
    progress = C.Progress(enabled=not args.no_progress)
    settings = C.Settings.make(
        args.quick, rounds=args.rounds, round_time=args.round_time, pool_rounds=args.pool_rounds,
        compile_kernels=args.compile_kernels, compile_rounds=args.compile_rounds,
        compile_workers=args.compile_workers, corpus_dir=args.corpus_dir,
        corpus_kernels=args.corpus_kernels, progress=progress)
    start = time.perf_counter()
    whole = C.CpuMeter()
    res: dict[str, Any] = {
        "schema": C.SCHEMA_VERSION,
        "date": args.date or datetime.date.today().isoformat(),
        "command": "python -m pyruntime.bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": C.machine_info(),
        "settings": {k: v for k, v in vars(settings).items() if k != "progress"},
        "method": settings.describe(),
        "suites": {},
    }
    print(R.render_header(res), flush=True)
    for name in names:
        progress.step(name, "starting")
        load = list(os.getloadavg())
        meter = C.CpuMeter()
        suite = run_suite(name, settings)
        suite["loadavg_start"] = load
        suite["cpu"] = meter.stop()
        progress.done()
        res["suites"][name] = suite
        print(R.render_suite(suite), flush=True)
    res["seconds"] = time.perf_counter() - start
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["cpu"] = whole.stop()
    print(R.render_footer(res))
    if args.json:
        _write(args.json, json.dumps(res, indent=1, sort_keys=False) + "\n")
        print(f"wrote {args.json}")
        if not args.no_plots:
            stem = os.path.splitext(args.json)[0]
            for path in R.write_plots(res, stem):
                print(f"wrote {path}")
    if args.markdown:
        _write(args.markdown, R.render_markdown(res))
        print(f"wrote {args.markdown}")
    failed = [n for n, s in res["suites"].items() if s["status"] == "error"]
    return 1 if failed else 0


def _rerender(args: argparse.Namespace) -> int:
    try:
        with open(args.from_json) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"pyruntime.bench: cannot read {args.from_json}: {e}") from None
    if res.get("schema") != C.SCHEMA_VERSION:
        raise SystemExit(f"pyruntime.bench: {args.from_json} is not a bench result (schema "
                         f"{res.get('schema')!r}, expected {C.SCHEMA_VERSION})")
    print(R.render_text(res))
    if not args.no_plots:
        for path in R.write_plots(res, os.path.splitext(args.from_json)[0]):
            print(f"wrote {path}")
    if args.markdown:
        _write(args.markdown, R.render_markdown(res))
        print(f"wrote {args.markdown}")
    return 0


def _write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
