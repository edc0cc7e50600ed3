"""One process of the concurrent-pull tests (tests/test_store.py) and of
the store bench suite:

    python -m pyruntime.bench._pull_worker URL REF CACHE_DIR THREADS GO_FILE

opens the store, creates ``GO_FILE.ready.<pid>``, waits until GO_FILE
exists (so that every process starts pulling at once), pulls REF into CACHE_DIR from THREADS threads at the
same time, and prints one JSON object: {"results": [{"restored": n,
"existing": m} or {"error": "..."} per thread], "seconds": ...}.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def main(argv: list[str]) -> int:
    url, ref, cache_dir, threads, go = argv[0], argv[1], argv[2], int(argv[3]), argv[4]
    from pyruntime.store import open_store

    store = open_store(url)
    results: list[dict] = [{} for _ in range(threads)]
    start = threading.Barrier(threads)

    def one(i: int) -> None:
        start.wait()
        try:
            r = store.pull(ref, cache_dir)
            results[i] = {"restored": len(r.restored), "existing": len(r.existing)}
        except Exception as e:  # reported to the test, which fails on it
            results[i] = {"error": f"{type(e).__name__}: {e}"}

    open(f"{go}.ready.{os.getpid()}", "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print(json.dumps({"error": "never told to start"}))
            return 1
        time.sleep(0.002)
    t0 = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"results": results, "seconds": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
