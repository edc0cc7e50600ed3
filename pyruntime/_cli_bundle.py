"""``bundle`` and ``cache`` commands of ``python -m pyruntime``.

::

    bundle create  --cache-dir DIR -o FILE [--kernel HASH ...]
    bundle restore FILE [--cache-dir DIR] [--target cuda:90] [--on-mismatch warn|error|force]
                   [--on-conflict replace|error|skip] [--fsync]
    bundle inspect FILE [--json]
    bundle verify  FILE
    cache hash  DIR
    cache clean DIR [--max-age SECONDS] [--all] [--dry-run]

Exit status, whatever the input: 0 on success; ``bundle verify`` exits 1
when the file is not a valid bundle (corrupt, truncated, over a limit, not
a regular file, or verifying it ran out of memory) and 2 when it cannot be
read at all (missing, no permission, an I/O error); every other failure of
``bundle``/``cache`` commands (including a bundle for another Triton under
``--on-mismatch error``, and kernel paths held by non-directories under
``--on-conflict error``) exits 2. ``bundle restore`` exits 3 when it wrote
what it could but some kernel paths are held by something that is not a
kernel directory (a file, FIFO, socket, device or symlink) that it could
not replace (``--on-conflict replace``, the default: e.g. no permission to
remove it); under ``--on-conflict skip`` leaving them is what was asked, and
it exits 0. Each failure prints one line naming the file and the problem,
never a traceback; ``bundle restore`` also prints one line per such kernel
(``replaced HASH: ...`` on stdout, ``blocked HASH: ...`` on stderr), and
``cache clean`` one per kernel-named entry that is not a directory
(``blocked PATH: ...``, left for a restore to replace).

``bundle inspect`` shows the bundle's Python ABI (``triton_abi``: the
Python that collected it, whose Triton wheel made the kernels' cache keys)
and says when it is not this interpreter's; ``bundle restore`` treats such a
bundle as a mismatch under ``--on-mismatch``, like another Triton version.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

from .errors import UserError, one_line
from .errors import BundleFormatError


def register(subparsers: Any) -> None:
    b = subparsers.add_parser("bundle", help="create, restore, inspect and verify kernel bundles",
                              description="Kernel bundles: compiled Triton kernels in one verified file.")
    bsub = b.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")

    p = bsub.add_parser("create", help="bundle the kernels of a Triton cache directory")
    p.add_argument("--cache-dir", required=True, metavar="DIR", help="Triton cache directory to read")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="bundle file to write")
    p.add_argument("--kernel", action="append", default=None, metavar="HASH",
                   help="bundle only this kernel directory (repeatable); default: every complete kernel")
    p.add_argument("--python-abi", default="auto", metavar="TAG",
                   help="Python ABI tag the kernels were built under, e.g. cpython-312-x86_64-linux-gnu "
                        "(Triton's keys depend on it); 'local' for this interpreter's, 'unknown'; default "
                        "'auto': this interpreter's when the installed Triton built every kernel, else unknown")
    p.set_defaults(handler=_create)

    p = bsub.add_parser("merge", help="one bundle of several (targets, Python ABIs, host code)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="bundle file to write")
    p.set_defaults(handler=_merge)

    p = bsub.add_parser("restore", help="write a bundle's kernels into a Triton cache directory")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache directory (default: $TRITON_CACHE_DIR, else ~/.triton/cache)")
    p.add_argument("--target", default=None, metavar="TARGET",
                   help="target the kernels must be built for, e.g. cuda:90 (default: not checked)")
    p.add_argument("--on-mismatch", choices=("warn", "error", "force"), default=None,
                   help="kernels for another Triton version, Python ABI or target: warn and skip (default), "
                        "error (write nothing), force (write anyway)")
    p.add_argument("--on-conflict", choices=("replace", "error", "skip"), default=None,
                   help="a kernel path held by something that is not a kernel directory (file, FIFO, "
                        "symlink...): replace it (default; $PYRUNTIME_RESTORE_ON_CONFLICT), error (write "
                        "nothing), skip (leave it, report it)")
    p.add_argument("--fsync", action="store_true", default=None, help="fsync files and directories")
    p.add_argument("--no-host-code", dest="host_code", action="store_false", default=None,
                   help="do not write the bundle's host code (Triton's compiled launcher modules; default: "
                        "written when they fit this machine's platform, Python and Triton; PYRUNTIME_HOST_CODE=0)")
    p.set_defaults(handler=_restore)

    p = bsub.add_parser("inspect", help="show a bundle's header and kernels")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_inspect)

    p = bsub.add_parser("verify", help="check a bundle completely (exit 1 when it is not valid)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(handler=_verify)

    c = subparsers.add_parser("cache", help="hash or clean a Triton cache directory",
                              description="Triton cache directory tools.")
    csub = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    p = csub.add_parser("hash", help="print the directory digest (XXH3-128, docs/FORMAT.md)")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=_hash)
    p = csub.add_parser("clean", help="remove tmp.* litter of dead restores and old compiles")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--max-age", type=float, default=None, metavar="SECONDS",
                   help="also remove tmp.* entries no running restore holds locked once older than this "
                        "(default 3600; Triton's are never locked)")
    p.add_argument("--all", action="store_true",
                   help="remove every tmp.* no running restore holds locked, whatever its age "
                        "(no compile may be running)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.set_defaults(handler=_clean)


# --------------------------------------------------------------------------
# helpers


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing_file(path: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a bundle file")
    return path


def _existing_dir(path: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise UserError(f"{path}: not a directory")
    return path


class _InvalidBundle(UserError):
    """The file is there and readable but is not a valid bundle."""


def _verified(path: str, fn: Any = None) -> tuple[Any, int]:
    """``fn(data)`` (default: decode) of the bundle file at ``path`` and
    its size; :class:`_InvalidBundle` or :class:`UserError` in one line
    naming the file otherwise."""
    from .bundle.format import exhausted, decode, read_file

    try:
        data = read_file(_existing_file(path))
        return (fn or decode)(data), len(data)
    except BundleFormatError as e:
        raise _InvalidBundle(f"{path}: {e}") from None
    except (MemoryError, RecursionError) as e:
        raise _InvalidBundle(f"{path}: {exhausted(e)}") from None
    except OSError as e:
        if e.errno == errno.ENOMEM:
            raise _InvalidBundle(f"{path}: {exhausted(e)}") from None
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None


def _load(path: str) -> Any:
    return _verified(path)


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# handlers


def _create(args: argparse.Namespace) -> int:
    from .bundle.collect import collect_dir
    from .bundle.rules import check_kernel_hash

    _existing_dir(args.cache_dir)
    if args.kernel:
        for h in args.kernel:
            try:
                check_kernel_hash(h)
            except BundleFormatError as e:
                raise UserError(f"--kernel: {e}") from None
    abi = None if args.python_abi == "unknown" else args.python_abi
    try:
        bundle = collect_dir(args.cache_dir, args.kernel, triton_abi=abi)
    except BundleFormatError as e:
        raise UserError(f"cannot bundle {args.cache_dir}: {e}") from None
    if args.kernel:
        missing = sorted(set(args.kernel) - {k.kernel_hash for k in bundle.kernel_artifacts})
        if missing:
            raise UserError(f"{args.cache_dir}: kernel(s) not found: {', '.join(missing)}")
    if not bundle.kernel_artifacts:
        raise UserError(f"{args.cache_dir}: no complete Triton kernel directories found; nothing to bundle")
    size = bundle.save(args.output)
    raw = bundle.size
    files = sum(len(k.artifacts) for k in bundle.kernel_artifacts)
    print(f"wrote {args.output}: {len(bundle)} kernels, {files} files, {_human(raw)} -> {_human(size)} "
          f"({raw / size:.2f}x), targets {', '.join(bundle.targets) or 'unknown'}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from .bundle.compat import triton_cache_dir
    from .bundle.restore import conflict_policy
    from .errors import BundleCompatibilityError, KernelPathConflictError

    bundle, _ = _load(args.file)
    cache_dir = args.cache_dir or triton_cache_dir(0)
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise UserError(f"{cache_dir}: not a directory")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below instead
            result = bundle.restore(cache_dir, on_mismatch=args.on_mismatch, target=args.target, fsync=args.fsync,
                                    on_conflict=args.on_conflict, host_code=args.host_code)
    except BundleCompatibilityError as e:
        raise UserError(f"{args.file}: {e}") from None
    except BundleFormatError as e:
        raise UserError(f"{args.file}: {e}") from None
    except KernelPathConflictError as e:
        for h, what in e.blocked.items():
            print(f"  blocked {h}: {what}", file=sys.stderr)
        raise UserError(f"{args.file}: {e}") from None
    print(f"restored {len(result.restored)} kernels ({result.files_written} files, "
          f"{_human(result.bytes_written)}) into {cache_dir}; "
          f"{len(result.existing)} already present; {len(result.incompatible)} skipped; "
          f"{len(result.replaced)} replaced; {len(result.blocked)} blocked")
    if result.message:
        print(f"warning: {result.message}", file=sys.stderr)
    for h, reason in result.incompatible.items():
        print(f"  skipped {h}: {reason}", file=sys.stderr)
    if result.skipped:
        why: dict[str, int] = {}
        for reason in result.skipped.values():
            why[reason] = why.get(reason, 0) + 1
        print(f"left out {len(result.skipped)} entries not for this machine: "
              + "; ".join(f"{n} x {r}" for r, n in sorted(why.items(), key=lambda x: -x[1])[:6]))
    for h, what in result.replaced.items():
        print(f"  replaced {h}: {what} held its path")
    for h, what in result.blocked.items():
        print(f"  blocked {h}: {what}", file=sys.stderr)
    if result.stale_removed:
        print(f"  removed {len(result.stale_removed)} leftover tmp.* entries of dead restores or old compiles")
    if not result.blocked:
        return 0
    if conflict_policy(args.on_conflict) == "skip":
        print(f"warning: {len(result.blocked)} kernel(s) not restored: their paths are held by something "
              "that is not a kernel directory (left in place: --on-conflict skip)", file=sys.stderr)
        return 0
    print(f"pyruntime: error: {len(result.blocked)} kernel(s) not restored: their paths are held by "
          "something that is not a kernel directory and could not be replaced", file=sys.stderr)
    return 3


def _merge(args: argparse.Namespace) -> int:
    from .bundle.model import merge

    bundles = [_load(f)[0] for f in args.files]
    try:
        merged = merge(bundles)
    except BundleFormatError as e:
        raise UserError(f"cannot merge: {e}") from None
    size = merged.save(args.output)
    print(f"wrote {args.output}: {len(merged)} entries from {len(bundles)} bundles, {_human(size)}, "
          f"targets {', '.join(merged.targets) or 'unknown'}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .bundle.format import describe
    from .bundle.compat import installed_triton_abi

    info, _ = _verified(args.file, describe)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"bundle          {args.file}")
    print(f"format          {info['format']} v{info['format_version']} (written by pyruntime "
          f"{info['pyruntime_version']})")
    print(f"triton          {info['triton_version'] or 'unknown'}")
    abi, here = info["triton_abi"], installed_triton_abi()
    note = ""
    if abi and here and abi != here:
        note = (f" (this interpreter is {here}: Triton's cache keys differ per Python version, "
                "so Triton here would not use these kernels)")
    print(f"python abi      {abi or 'unknown (not recorded)'}{note}")
    print(f"targets         {', '.join(info['targets']) or 'unknown'}")
    print(f"content digest  {info['content_digest']}")
    print(f"size            {_human(info['raw_size'])} of kernel files in {_human(info['file_size'])} "
          f"(compression ratio {info['compression_ratio']:.2f}x)")
    print()
    matrix: dict[tuple[str, str], int] = {}
    for k in info["kernels"]:
        cell = {"kernel": k["target"] or "-", "host": f"host code ({k['platform'] or '?'})",
                "autotune": "autotune results"}.get(k["kind"], k["kind"])
        key = (cell, k["triton_abi"] or "unknown abi")
        matrix[key] = matrix.get(key, 0) + 1
    if len(matrix) > 1 or any(k["kind"] != "kernel" for k in info["kernels"]):
        print("entries by target and Python ABI:")
        for (cell, cabi), n in sorted(matrix.items()):
            print(f"  {cell:<28} {cabi:<34} {n}")
        print()
    rows = [["kernel hash", "name", "kind", "target", "device", "files", "size"]]
    for k in info["kernels"]:
        rows.append([k["hash"], ",".join(k["names"]) or "-", k["kind"], k["target"] or "-", str(k["device"]),
                     str(k["files"]), _human(k["size"])])
    rows.append(["total", f"{len(info['kernels'])} entries", "", "", "", str(sum(k["files"] for k in info["kernels"])),
                 _human(info["raw_size"])])
    print(_table(rows, right={4, 5, 6}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        bundle, _ = _verified(args.file)
    except _InvalidBundle as e:
        path, _, problem = str(e).partition(": ")
        print(one_line(f"{path}: INVALID: {problem}"), file=sys.stderr)
        return 1
    files = sum(len(k.artifacts) for k in bundle.kernel_artifacts)
    print(f"{args.file}: OK: {len(bundle)} kernels, {files} files, digest {bundle.content_digest}")
    return 0


def _hash(args: argparse.Namespace) -> int:
    from .hashing import hash_dir

    print(hash_dir(_existing_dir(args.dir)))
    return 0


def _clean(args: argparse.Namespace) -> int:
    from .bundle.restore import DEFAULT_MAX_AGE_S, clean
    from .bundle.rules import shown

    _existing_dir(args.dir)
    if args.max_age is not None and args.max_age < 0:
        raise UserError("--max-age must not be negative")
    max_age = DEFAULT_MAX_AGE_S if args.max_age is None else args.max_age
    result = clean(args.dir, max_age=max_age, everything=args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in result.removed:  # a litter name may hold anything but '/' and NUL
        print(f"{verb} {path if path.isprintable() else shown(path)}")
    for path, what in result.blocked.items():
        print(f"blocked {path}: {what}, not a kernel directory (left; `bundle restore` replaces it)")
    print(f"{verb} {len(result.removed)} tmp.* entries; kept {len(result.kept)} "
          f"(locked by running restores, or younger than {max_age:g} s)"
          + (f"; {len(result.blocked)} kernel paths blocked" if result.blocked else ""))
    return 0
