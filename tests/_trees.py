"""Helpers shared by the cache and kernel-directory tests: a directory tree
as {relative path: bytes}, and the tmp.* litter at its top level."""

from __future__ import annotations

import os


def tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def litter(root: str) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith("tmp."))
