"""Entry point of a bench child interpreter: ``python -m
pyruntime.bench._child module:function IN.json OUT.json``.

Calls ``function(**json.load(IN))`` and writes its JSON-able return value to
OUT (written to a temporary name and renamed, so the parent never reads half
a result). Used for peers that import torch and for anything that might hang.
"""

from __future__ import annotations

import importlib
import json
import os
import sys


def main(argv: list[str]) -> int:
    target, inp, outp = argv
    module, _, func = target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    with open(inp) as f:
        kwargs = json.load(f)
    result = fn(**kwargs)
    tmp = outp + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, outp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
