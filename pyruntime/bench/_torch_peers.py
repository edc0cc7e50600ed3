"""The peer side of the bundle suite: torch's own TritonBundler, whose bundle
is a pickled object (the thing pyruntime's data-only format replaces). Kept
apart from pyruntime's bundle code on purpose: only the benchmark unpickles,
and only what it just pickled itself."""

from __future__ import annotations

import os
import time


def torch_bundler_round_trip(cache: str, hashes: list[str], path: str, dest: str) -> dict[str, float]:
    import pickle

    from torch._inductor import config
    from torch._inductor.triton_bundler import TritonBundler

    config.bundle_triton_into_fx_graph_cache = True
    os.environ["TRITON_CACHE_DIR"] = cache
    t0 = time.perf_counter()
    TritonBundler.begin_compile()
    for h in hashes:
        TritonBundler.put(h, 0)
    bundle, _meta = TritonBundler.collect()
    t1 = time.perf_counter()
    data = pickle.dumps(bundle)
    with open(path, "wb") as f:
        f.write(data)
    t2 = time.perf_counter()
    with open(path, "rb") as f:
        loaded = pickle.loads(f.read())
    t3 = time.perf_counter()
    os.environ["TRITON_CACHE_DIR"] = dest
    TritonBundler.read_and_emit(loaded)
    t4 = time.perf_counter()
    os.environ["TRITON_CACHE_DIR"] = cache
    if len(bundle.kernel_artifacts) != len(hashes):
        raise RuntimeError(f"torch collected {len(bundle.kernel_artifacts)} of {len(hashes)} kernels")
    return {"collect": t1 - t0, "save": t2 - t1, "load": t3 - t2, "restore": t4 - t3,
            "size": float(len(data))}
