"""``python -m pyruntime record -o KERNELS_FILE -- COMMAND...``: run a command
and write every Triton kernel it launches to a kernel list.

::

    python -m pyruntime record -o kernels.toml -- python serve.py --warmup-only
    python -m pyruntime precompile kernels.toml --target cuda:90 --bundle kernels.prtb

How the command's Python processes start recording, without changing the
command: the child environment gets ``PYRUNTIME_RECORD=<absolute path of the
list>`` and, first on ``PYTHONPATH``, a temporary directory holding only a
``sitecustomize.py``. Python imports ``sitecustomize`` at start-up (unless run
with ``-S`` or ``-I``); this one first runs the ``sitecustomize`` it shadows,
if there is one, then imports :mod:`pyruntime.record`, which sees
``PYRUNTIME_RECORD`` and starts recording right after the process imports
Triton (never importing Triton itself). Child processes inherit both
variables, so workers record too; all of them merge into the one file under
a file lock. A Python without pyruntime installed prints one line and runs
unrecorded.

``TRITON_CACHE_AUTOTUNING=0`` is set for the command unless the
environment sets it: with the autotuner's results cached on disk a second
run would try (and so record) only the configs it chose before.

Exit status: the command's own; 2 when it cannot be started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .errors import UserError

__all__ = ["SITECUSTOMIZE", "register", "run"]

# Written to a temporary directory put first on the command's PYTHONPATH.
SITECUSTOMIZE = '''\
# Written by `python -m pyruntime record`: records the Triton kernels this
# process launches (pyruntime.record, PYRUNTIME_RECORD) after running the
# sitecustomize module this one shadows, if any.
import os as _os
import sys as _sys


def _pyruntime_record_boot():
    here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != here]
    mine = _sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  the one this file shadows
    except ModuleNotFoundError as e:
        if e.name != "sitecustomize":
            raise
        if mine is not None:
            _sys.modules["sitecustomize"] = mine
    except Exception as e:  # as site.py reports a failing sitecustomize
        print(f"Error in sitecustomize; set PYTHONVERBOSE for traceback: {type(e).__name__}: {e}",
              file=_sys.stderr)
    if _os.environ.get("PYRUNTIME_RECORD"):
        try:
            import pyruntime.record  # noqa: F401  starts recording once triton is imported
        except Exception as e:
            print(f"pyruntime record: not recording in {_sys.executable}: {type(e).__name__}: {e}",
                  file=_sys.stderr)


_pyruntime_record_boot()
del _pyruntime_record_boot
'''


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "record",
        help="run a command and write the Triton kernels it launches to a kernel list",
        description="Run COMMAND and merge every distinct Triton kernel specialisation its Python processes "
                    "compile or load (autotune configs included) into a kernel list (docs/KERNELS.md), "
                    "ready for `python -m pyruntime precompile`.",
        epilog="Exit status: the command's own; 2 when it cannot be started.",
    )
    p.add_argument("-o", "--output", required=True, metavar="KERNELS_FILE",
                   help="kernel list to write or merge into (.toml or .json)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the command to run, after --")
    p.set_defaults(handler=run)


def _count(path: str) -> int:
    from .kernels import load_kernel_list

    if not os.path.exists(path):
        return 0
    return len(load_kernel_list(path))


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("record: give the command to run after --, e.g. "
                        "python -m pyruntime record -o kernels.toml -- python app.py")
    out = os.path.abspath(args.output)
    if not out.lower().endswith((".toml", ".json")):
        raise UserError(f"record: {args.output}: a kernel list must be a .toml or .json file")
    before = _count(out)  # also refuses a file that is not a valid kernel list, before running anything
    shim = tempfile.mkdtemp(prefix="pyruntime-record-")
    try:
        with open(os.path.join(shim, "sitecustomize.py"), "w", encoding="utf-8") as f:
            f.write(SITECUSTOMIZE)
        env = dict(os.environ)
        env["PYRUNTIME_RECORD"] = out
        env["PYTHONPATH"] = os.pathsep.join([shim] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("TRITON_CACHE_AUTOTUNING", "0")
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as e:
            raise UserError(f"record: cannot run {command[0]!r}: {e.strerror or e}") from None
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the command got the same SIGINT: let it finish writing
            rc = proc.wait()
    finally:
        shutil.rmtree(shim, ignore_errors=True)
    after = _count(out)
    print(f"record: {args.output}: {after} kernel entries, {after - before} new, from {' '.join(command)}"
          f" (exit status {rc})", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc  # killed by a signal: as a shell reports it
