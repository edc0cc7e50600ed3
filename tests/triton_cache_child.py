"""A fresh process for tests/test_triton_cache.py, run with the Triton and
pyruntime settings under test in its environment:

    python triton_cache_child.py compile I [I ...]     triton.compile sample kernels I (cuda:90)
    python triton_cache_child.py group KEYHEX FILE     get_cache_manager(KEYHEX).get_group(FILE)
    python triton_cache_child.py open                  open PYRUNTIME_BUNDLES only (no lookup)

Prints one JSON object on its last line: per compile the kernel's cache
directory name and whether Triton's compilation listener saw a cache hit;
the group; the warnings raised; an error as "Type: message".
"""

from __future__ import annotations

import base64
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str]) -> int:
    out: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if argv[0] == "compile":
                out["compiled"] = compile_samples([int(i) for i in argv[1:]])
            elif argv[0] == "group":
                from triton.runtime.cache import get_cache_manager

                out["group"] = get_cache_manager(argv[1]).get_group(argv[2])
            elif argv[0] == "open":
                from pyruntime import triton_cache

                s = triton_cache.bundle_set()
                out["open"] = {"kernels": len(s.where), "built": [b.index_built for b in s.bundles]}
        except Exception as e:  # reported to the test
            out["error"] = f"{type(e).__name__}: {e}"
    out["warnings"] = [str(w.message) for w in caught if "FP_FUSION" not in str(w.message)]
    print(json.dumps(out))
    return 0


def compile_samples(which: list[int]) -> list[dict]:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import bundle_kernels

    seen: list[bool] = []

    def listener(*, cache_hit: bool, **_: object) -> None:
        seen.append(cache_hit)

    knobs.compilation.listener = listener
    done = []
    for i in which:
        fn, signature, constexprs = bundle_kernels.SAMPLES[i]
        k = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        key = base64.b32encode(bytes.fromhex(k.hash)).decode().rstrip("=")
        done.append({"key": key, "hex": k.hash, "hit": seen[-1] if seen else None})
    return done


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
