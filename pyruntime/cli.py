"""``python -m pyruntime``: the command-line interface.

Each command group lives in its own module exposing ``register(subparsers)``;
a handler returns the exit status. User errors (bad input files, missing
paths) print one clear line to stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import PyRuntimeError, UserError, one_line

# module providing register(subparsers) for each command group
COMMAND_MODULES = (
    "pyruntime._cli_precompile",  # precompile
    "pyruntime._cli_bundle",  # bundle ..., cache ...
    "pyruntime._cli_store",  # store push, pull, ls
    "pyruntime._cli_record",  # record
    "pyruntime._cli_torch",  # torch export, import, verify, inspect, sign, keygen
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyruntime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (UserError, PyRuntimeError, OSError, ValueError) as e:
        print(f"pyruntime: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except (MemoryError, RecursionError) as e:
        what = "memory" if isinstance(e, MemoryError) else "stack"
        print(f"pyruntime: error: out of {what} ({one_line(str(e)) or type(e).__name__})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyruntime: interrupted", file=sys.stderr)
        return 130
