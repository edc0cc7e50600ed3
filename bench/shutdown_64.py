"""Issue 9: how long SubprocPool.shutdown takes with 64 workers, one of them
running a job that ignores SIGTERM. Run: python bench/shutdown_64.py"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import pool_jobs as J  # noqa: E402
from proc_util import wait_gone  # noqa: E402

from pyruntime import SubprocPool  # noqa: E402


def once(grace: float) -> tuple[float, float]:
    p = SubprocPool(64, shutdown_grace=grace)
    t0 = time.monotonic()
    assert p.wait_ready(120)
    ready = time.monotonic() - t0
    pids = [p.sidecar_pid, *p.worker_pids]
    p.submit(J.ignore_sigterm_and_sleep, 600)
    time.sleep(0.3)
    t0 = time.monotonic()
    p.shutdown(wait=True, timeout=0)
    took = time.monotonic() - t0
    assert not wait_gone(pids, 1.0)
    return ready, took


if __name__ == "__main__":
    for grace in (0.5, 1.0, 2.0):
        runs = [once(grace) for _ in range(3)]
        print(f"grace {grace:.1f} s: 64 workers up in {statistics.median(r[0] for r in runs):.2f} s; "
              f"shutdown {', '.join(f'{r[1]:.2f}' for r in runs)} s (bound: grace + 1 s)")
