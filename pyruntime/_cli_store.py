"""``store`` commands of ``python -m pyruntime``: bundles through S3,
Redis or a directory (:mod:`pyruntime.store`).

::

    store push BUNDLE URL [--name NAME[:TAG]] [--endpoint URL]
    store pull URL NAME[:TAG]|DIGEST [--cache-dir DIR] [--target T] [--on-mismatch P]
               [--on-error warn|error] [--endpoint URL]
    store ls   URL [--json] [--endpoint URL]

``push`` verifies the bundle, uploads it under its content digest (once)
and prints the digest. ``pull`` downloads, verifies the whole bundle, then
restores it atomically. A store that fails prints one line and exits 2;
``pull --on-error warn`` (or ``PYRUNTIME_STORE_ON_ERROR=warn``) prints a
warning instead and exits 0, for launchers that fall back to compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

from .errors import BundleCompatibilityError, UserError


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("store", help="push, pull and list bundles in S3, Redis or a directory",
                              description="Kernel bundles in a store: file:///path, s3://bucket/prefix "
                              "(boto3; endpoint from --endpoint or AWS_ENDPOINT_URL), redis://host:port/db.")
    ssub = s.add_subparsers(dest="store_command", required=True, metavar="ACTION")

    def endpoint(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", metavar="URL", default=None,
                       help="S3-compatible endpoint, e.g. http://minio:9000 (default: $AWS_ENDPOINT_URL, else AWS)")

    p = ssub.add_parser("push", help="upload a bundle file under its content digest; prints the digest")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("url", metavar="URL")
    p.add_argument("--name", metavar="NAME[:TAG]", default=None,
                   help="point this name at the bundle (tag defaults to 'latest')")
    endpoint(p)
    p.set_defaults(handler=_push)

    p = ssub.add_parser("pull", help="download a bundle, verify all of it, restore it into a Triton cache")
    p.add_argument("url", metavar="URL")
    p.add_argument("ref", metavar="NAME[:TAG]|DIGEST")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache directory (default: $TRITON_CACHE_DIR, else ~/.triton/cache)")
    p.add_argument("--target", default=None, metavar="TARGET",
                   help="target the kernels must be built for, e.g. cuda:90 (default: not checked)")
    p.add_argument("--on-mismatch", choices=("warn", "error", "force"), default=None,
                   help="kernels for another Triton version, Python ABI or target (as bundle restore)")
    p.add_argument("--on-error", choices=("warn", "error"), default=None,
                   help="store unreachable or object bad: error (exit 2, default) or warn (exit 0: Triton "
                        "will compile); default $PYRUNTIME_STORE_ON_ERROR, else error")
    p.add_argument("--fsync", action="store_true", default=None, help="fsync files and directories")
    endpoint(p)
    p.set_defaults(handler=_pull)

    p = ssub.add_parser("ls", help="list names and bundles in a store")
    p.add_argument("url", metavar="URL")
    p.add_argument("--json", action="store_true", help="print JSON")
    endpoint(p)
    p.set_defaults(handler=_ls)


def _open(args: argparse.Namespace) -> Any:
    from .store import open_store

    try:
        return open_store(args.url, endpoint=args.endpoint)
    except ValueError as e:
        raise UserError(str(e)) from None


def _push(args: argparse.Namespace) -> int:
    from .errors import BundleFormatError
    from .store import parse_name

    if not os.path.isfile(args.bundle):
        raise UserError(f"{args.bundle}: no such file" if not os.path.exists(args.bundle)
                        else f"{args.bundle}: not a bundle file")
    if args.name is not None:
        try:
            parse_name(args.name)
        except ValueError as e:
            raise UserError(f"--name: {e}") from None
    with _open(args) as store:
        try:
            digest = store.push(args.bundle, name=args.name)
        except BundleFormatError as e:
            raise UserError(f"{args.bundle}: {e}") from None
    print(digest)
    if args.name:
        name = args.name if ":" in args.name else f"{args.name}:latest"
        print(f"{name} -> {digest} in {store.url}", file=sys.stderr)
    return 0


def _pull(args: argparse.Namespace) -> int:
    from .bundle.compat import triton_cache_dir
    from .store import StoreError, on_error_policy, parse_ref

    try:
        parse_ref(args.ref)
    except ValueError as e:
        raise UserError(str(e)) from None
    policy = on_error_policy(args.on_error) if args.on_error or os.environ.get("PYRUNTIME_STORE_ON_ERROR") \
        else "error"
    cache_dir = args.cache_dir or triton_cache_dir(0)
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise UserError(f"{cache_dir}: not a directory")
    try:
        with _open(args) as store:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reported below instead
                result = store.pull(args.ref, cache_dir, on_mismatch=args.on_mismatch, target=args.target,
                                    fsync=args.fsync)
    except BundleCompatibilityError as e:
        raise UserError(f"{args.ref}: {e}") from None
    except StoreError as e:
        if policy == "warn":
            print(f"pyruntime: warning: {e}; nothing restored (Triton will compile)", file=sys.stderr)
            return 0
        raise
    r = result.restore
    print(f"pulled {result.digest} ({result.size} bytes): restored {len(r.restored)} kernels "
          f"({r.files_written} files) into {cache_dir}; {len(r.existing)} already present; "
          f"{len(r.incompatible)} skipped")
    if r.message:
        print(f"warning: {r.message}", file=sys.stderr)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with _open(args) as store:
        listing = store.ls()
    if args.json:
        print(json.dumps({"store": store.url, "refs": listing.refs, "bundles": listing.blobs}, indent=2))
        return 0
    named = set(listing.refs.values())
    print(f"{'NAME:TAG':<40}  {'DIGEST':<32}  SIZE")
    for ref, digest in sorted(listing.refs.items()):
        size = listing.blobs.get(digest)
        print(f"{ref:<40}  {digest:<32}  {size if size is not None else '(missing)'}")
    for digest, size in sorted(listing.blobs.items()):
        if digest not in named:
            print(f"{'-':<40}  {digest:<32}  {size}")
    return 0
