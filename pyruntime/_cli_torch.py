"""``torch`` commands of ``python -m pyruntime``: torch.compile warm starts
from one verified file (:mod:`pyruntime.torch.artifacts`, docs/TORCH.md).

::

    torch export  -o FILE [--cache-dir DIR] [--sign-key KEY] [--no-native] [--passes 1|2]
                  -- SCRIPT|-m MODULE [ARGS...]
    torch import  FILE [--cache-dir DIR] [--trusted-key KEY ...] [--require-signature]
                  [--on-mismatch warn|error|force] [--no-native] [--json] [--report OUT]
                  [-- SCRIPT|-m MODULE [ARGS...]]
    torch verify  FILE [--trusted-key KEY ...] [--require-signature]
    torch inspect FILE [--json]
    torch sign    FILE --key KEY [-o OUT]
    torch keygen  --private FILE --public FILE

``export`` runs the script with a fresh Inductor cache (or ``--cache-dir``)
twice: first in a child process (the cold compile), then in this process
(as ``python SCRIPT ARGS`` would) on those caches, and saves what the
second, warm run used: on a warm start Inductor compiles a few Triton
kernels the cold run did not (the autotuned configs it reads back), and
those belong in the file. The script needs no change. ``import`` verifies the
file and writes it into the caches; with a script it then runs it and
reports, per cache kind, what torch hit and missed and why. Without one,
a launcher starts its workload afterwards with ``TORCHINDUCTOR_CACHE_DIR``
set to the same ``--cache-dir``.

A bad, tampered or untrusted file prints one line naming the problem and
exits with status 2 (``verify``: 1) before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Any

from ._atomic import write_atomic
from .errors import BundleFormatError, UserError


class _ScriptParser(argparse.ArgumentParser):
    """An action's parser: everything after the first ``--`` is the script
    to run and its arguments (``script``), so options may come anywhere
    before it and the script's own options are left alone."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        script: list[str] = []
        if "--" in args:
            i = args.index("--")
            args, script = args[:i], args[i + 1:]
        ns, extras = super().parse_known_args(args, namespace)
        if script:
            if getattr(ns, "script", None) is None:
                extras = [*extras, "--", *script]  # this action runs no script
            else:
                ns.script = script
        return ns, extras


def register(subparsers: Any) -> None:
    t = subparsers.add_parser("torch", help="torch.compile warm starts from one verified file",
                              description="torch.compile artifacts: Mega-Cache, Triton kernels, autotuning "
                                          "results and compiled libraries in one verified, optionally signed file.")
    tsub = t.add_subparsers(dest="torch_command", required=True, metavar="ACTION", parser_class=_ScriptParser)
    run_help = "-- SCRIPT [ARGS ...] or -- -m MODULE [ARGS ...]: what to run, after everything else"

    p = tsub.add_parser("export", help="run a script and save what its torch.compile left", epilog=run_help,
                        usage="%(prog)s -o FILE [options] -- SCRIPT|-m MODULE [ARGS ...]",
                        description="Run SCRIPT (or -m MODULE) in this process with a fresh Inductor cache, "
                                    "then save its compile artifacts to FILE.")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="artifacts file to write")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="Inductor cache directory to run with and keep (default: a fresh temporary one, removed)")
    p.add_argument("--sign-key", default=None, metavar="KEY", help="ed25519 private key file (PEM) to sign with")
    p.add_argument("--no-native", action="store_true", help="leave out compiled libraries (C++ kernels, "
                                                            "Triton modules)")
    p.add_argument("--passes", type=int, choices=(1, 2), default=2,
                   help="2 (default): run the script once in a child process (the cold compile), then again here "
                        "on its caches, and save from that warm start, which compiles the few kernels only a warm "
                        "start needs; 1: one run, saved at once")
    p.set_defaults(handler=_export, script=[])

    p = tsub.add_parser("import", help="verify a file and write it into the caches (optionally run a script)",
                        epilog=run_help, usage="%(prog)s FILE [options] [-- SCRIPT|-m MODULE [ARGS ...]]",
                        description="Verify FILE as a whole, then write it into the caches; with a script, run it "
                                    "and report what torch hit and missed.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="Inductor cache directory to fill (default: $TORCHINDUCTOR_CACHE_DIR, else torch's default)")
    _trust_args(p)
    p.add_argument("--on-mismatch", choices=("warn", "error", "force"), default="warn",
                   help="parts made under another torch, Triton, Python or CPU: skip and report (default), "
                        "error (write nothing), force (write anyway)")
    p.add_argument("--no-native", action="store_true", help="write no compiled libraries")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", default=None, metavar="OUT", help="also write the report as JSON to OUT")
    p.set_defaults(handler=_import, script=[])

    p = tsub.add_parser("verify", help="check a file completely (exit 1 when it does not verify)")
    p.add_argument("file", metavar="FILE")
    _trust_args(p)
    p.set_defaults(handler=_verify)

    p = tsub.add_parser("inspect", help="show a verified file's environment, parts and signature")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_inspect)

    p = tsub.add_parser("sign", help="sign a verified file with an ed25519 key (needs pyruntime[sign])")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key", required=True, metavar="KEY", help="ed25519 private key file (PEM or raw)")
    p.add_argument("-o", "--output", default=None, metavar="OUT", help="write here (default: in place)")
    p.set_defaults(handler=_sign)

    p = tsub.add_parser("keygen", help="make an ed25519 key pair for signing (needs pyruntime[sign])")
    p.add_argument("--private", required=True, metavar="FILE", help="private key to create (PEM, mode 0600)")
    p.add_argument("--public", required=True, metavar="FILE", help="public key to write (64 hex digits)")
    p.set_defaults(handler=_keygen)


def _trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trusted-key", action="append", default=None, metavar="KEY",
                   help="ed25519 public key (64 hex digits, or a file: hex, PEM or raw) the file must be signed "
                        "by (repeatable)")
    p.add_argument("--require-signature", action="store_true",
                   help="refuse a file that is not signed by a --trusted-key")


def _artifacts() -> Any:
    try:
        from .torch import artifacts
    except ImportError as e:
        raise UserError(f"the torch commands need torch ({e}): pip install 'pyruntime[torch]'") from None
    return artifacts


def _format() -> Any:
    """The file format alone (verify, inspect, sign, keygen): no torch needed."""
    from . import artifacts_file

    return artifacts_file


def _existing_file(path: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not an artifacts file")
    return path


def _run(argv: list[str]) -> None:
    """Run ``SCRIPT ARGS`` or ``-m MODULE ARGS`` in this process, as the
    interpreter would (``__main__``, ``sys.argv``, ``sys.path[0]``)."""
    if argv[0] == "-m":
        if len(argv) < 2:
            raise UserError("-m needs a module name")
        sys.argv = [argv[1], *argv[2:]]
        target, run = argv[1], lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        sys.path.insert(0, os.getcwd())
    else:
        script = argv[0]
        if not os.path.isfile(script):
            raise UserError(f"{script}: no such script")
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        target, run = script, lambda: runpy.run_path(script, run_name="__main__")
    try:
        run()
    except SystemExit as e:
        if e.code not in (None, 0):
            raise UserError(f"{target} exited with status {e.code}") from None


def _trust(args: argparse.Namespace) -> dict[str, Any]:
    if args.require_signature and not args.trusted_key:
        raise UserError("--require-signature needs --trusted-key: a signature by any key proves nothing")
    return {"trusted_keys": args.trusted_key, "require_signature": args.require_signature}


# --------------------------------------------------------------------------
# handlers


def _export(args: argparse.Namespace) -> int:
    argv = list(args.script)
    if not argv:
        raise UserError("export needs a script to run: python -m pyruntime torch export -o FILE -- SCRIPT [ARGS]")
    if args.sign_key is not None:
        _existing_file(args.sign_key)
    tmp = None
    if args.cache_dir is None:
        tmp = cache_dir = tempfile.mkdtemp(prefix="pyruntime-export-")
    else:
        cache_dir = os.path.abspath(args.cache_dir)
        os.makedirs(cache_dir, exist_ok=True)
    # before torch is imported: Inductor reads these when it first needs them
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_CACHE_DIR", None)  # Inductor's <cache>/triton/<device>, so the run's kernels only
    try:
        if args.passes == 2:
            cmd = [sys.executable, *argv] if argv[0] == "-m" else [sys.executable, argv[0], *argv[1:]]
            rc = subprocess.run(cmd, check=False).returncode
            if rc != 0:
                raise UserError(f"{' '.join(argv)[:64]}: the first pass exited with status {rc}")
        _run(argv)
        summary = _artifacts().save_compile_artifacts(args.output, sign_key=args.sign_key, cache_dir=cache_dir,
                                                      native=not args.no_native)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "nothing"
    signed = f", signed by {summary.signed_by[:16]}..." if summary.signed_by else ""
    print(f"wrote {summary.path}: {summary.size} bytes ({counts}), digest {summary.content_digest[:16]}...{signed}",
          file=sys.stderr)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _emit_report(report: Any, args: argparse.Namespace) -> None:
    if args.report:
        write_atomic(args.report, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format(), file=sys.stderr)


def _import(args: argparse.Namespace) -> int:
    argv = list(args.script)
    _existing_file(args.file)
    trust = _trust(args)
    if args.cache_dir is not None:
        # before torch is imported, so the script (if any) uses the caches filled here
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(args.cache_dir)
    artifacts = _artifacts()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report says the same
            report = artifacts.load_compile_artifacts(args.file, on_mismatch=args.on_mismatch,
                                                      native=not args.no_native, watch=bool(argv), **trust)
    except BundleFormatError as e:
        raise UserError(f"{args.file}: refused: {e}") from None
    if argv:
        try:
            _run(argv)
        finally:
            report.finish()
            _emit_report(report, args)
    else:
        _emit_report(report, args)
    return 0


def _verify(args: argparse.Namespace) -> int:
    _existing_file(args.file)
    trust = _trust(args)
    try:
        info = _format().read_compile_artifacts(args.file, **trust)
    except BundleFormatError as e:
        print(f"{args.file}: INVALID: {e}", file=sys.stderr)
        return 1
    parts = ", ".join(f"{k} {v['parts']}" for k, v in info.describe()["parts"].items())
    print(f"{args.file}: OK: {parts}; digest {info.content_digest}; signature: {info.signature}"
          + (f" by {info.signed_by}" if info.signed_by else ""))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    _existing_file(args.file)
    try:
        info = _format().read_compile_artifacts(args.file)
    except BundleFormatError as e:
        raise UserError(f"{args.file}: {e}") from None
    d = info.describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    env = d["environment"]
    print(f"file            {args.file} ({d['size']} bytes)")
    print(f"format          {d['format']} v{d['format_version']} (written by pyruntime {d['pyruntime_version']})")
    print(f"content digest  {d['content_digest']}")
    print(f"signature       {d['signature']}" + (f" by {d['signed_by']}" if d["signed_by"] else ""))
    print(f"made with       torch {env['torch']}, triton {env['triton']}, python {env['python']}, "
          f"{env['machine']}, cuda {env['cuda']}, gpu {env['gpu']}")
    mega = ", ".join(f"{k} {v}" for k, v in d["megacache_entries"].items()) or "none"
    print(f"torch entries   {mega}")
    for kind, v in d["parts"].items():
        extra = f", {v['kernels']} kernels" if "kernels" in v else ""
        print(f"{kind:<15} {v['parts']} part(s), {v['bytes']} bytes{extra}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    _existing_file(args.file)
    _existing_file(args.key)
    try:
        pub = _format().sign_compile_artifacts(args.file, args.key, args.output)
    except BundleFormatError as e:
        raise UserError(f"{args.file}: {e}") from None
    print(f"signed {args.output or args.file} with key {pub}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    if os.path.exists(args.private):
        raise UserError(f"{args.private}: exists; not overwriting a key")
    pub = _format().generate_signing_key(args.private, args.public)
    print(f"wrote {args.private} (private, keep it secret) and {args.public}: public key {pub}")
    return 0
