"""Production features of SubprocPool (issue 9), with real processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest

import pool_jobs as J
from proc_util import alive, wait_gone
from pyruntime import JobTimeoutError, SubprocPool, WorkerMemoryError
from pyruntime import config

pytestmark = pytest.mark.timeout(90)


def test_job_timeout_kills_and_replaces_worker():
    with SubprocPool(2) as p:
        assert p.wait_ready(10)
        start = time.monotonic()
        slow = p.submit(J.sleep, 30, timeout=0.5)
        fine = p.submit(J.sleep, 0.1, "ok", timeout=5)
        with pytest.raises(JobTimeoutError, match=r"job sleep ran past its 0.5 s timeout") as info:
            slow.result(10)
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - start < 3.0
        assert fine.result(10) == "ok"
        assert p.wait_ready(10)
        assert p.submit(J.add, 1, 1).result(10) == 2


def test_pool_default_timeout_applies():
    with SubprocPool(1, timeout=0.3) as p:
        with pytest.raises(JobTimeoutError):
            p.submit(J.sleep, 10).result(10)
        assert p.submit(J.sleep, 0.01, 5).result(10) == 5


def test_memory_limit_stops_the_worker_not_the_pool():
    with SubprocPool(2, memory_limit=150 << 20) as p:
        hog = p.submit(J.allocate, 400)
        small = [p.submit(J.add, i, i) for i in range(10)]
        with pytest.raises(WorkerMemoryError, match="memory limit") as info:
            hog.result(30)
        assert isinstance(info.value, MemoryError)
        assert [f.result(10) for f in small] == [2 * i for i in range(10)]
        assert p.submit(J.allocate, 10, 0).result(10) == 10 << 20


def test_workers_recycled_after_max_jobs():
    with SubprocPool(1, max_jobs_per_worker=3) as p:
        pids = [p.submit(J.getpid).result(10) for _ in range(10)]
    assert len(set(pids)) == 4
    assert pids[:3] == [pids[0]] * 3 and pids[3] != pids[0]


def test_status_and_long_job_callback():
    seen = []
    with SubprocPool(2, long_job_threshold=0.2, on_long_job=seen.append) as p:
        assert p.wait_ready(30)  # a loaded machine may take a while to fork the workers
        fut = p.submit(J.sleep, 0.8, "x")
        deadline = time.monotonic() + 5
        st = p.status()
        while time.monotonic() < deadline and not (st and st[0]["elapsed_s"] > 0.3):
            time.sleep(0.02)  # until the job has run a while on its worker
            st = p.status()
        assert len(st) == 1
        entry = st[0]
        assert entry["name"] == "sleep" and entry["worker_pid"] in p.worker_pids
        assert 0.2 < entry["elapsed_s"] < 5 and isinstance(entry["job_id"], int)
        assert fut.result(10) == "x"
        assert p.status() == []
    assert len(seen) == 1 and seen[0]["name"] == "sleep" and seen[0]["elapsed_s"] >= 0.2


def test_bounded_shutdown_with_64_workers_and_a_sigterm_ignorer():
    p = SubprocPool(64, shutdown_grace=1.0)
    assert p.wait_ready(60)
    pids = [p.sidecar_pid, *p.worker_pids]
    stubborn = p.submit(J.ignore_sigterm_and_sleep, 60)
    time.sleep(0.3)
    start = time.monotonic()
    p.shutdown(wait=True, timeout=0)
    took = time.monotonic() - start
    assert took < 1.0 + 1.5, f"shutdown took {took:.2f} s"
    assert stubborn.exception(1) is not None
    assert not wait_gone(pids, 1.0)


def _run_pool_in_daemon(q):
    sys.path.insert(0, os.path.dirname(__file__))
    import pool_jobs

    with SubprocPool(2) as p:
        q.put(p.submit(pool_jobs.add, 20, 22).result(30))


def test_works_inside_a_daemonic_process():
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_run_pool_in_daemon, args=(q,), daemon=True)
    proc.start()
    assert q.get(timeout=60) == 42
    proc.join(30)
    assert proc.exitcode == 0


def test_works_with_many_threads_running():
    stop = threading.Event()
    spinners = [threading.Thread(target=stop.wait) for _ in range(64)]
    for t in spinners:
        t.start()
    try:
        with SubprocPool(2) as p:
            assert sum(p.map(J.add, range(100), range(100))) == 9900
    finally:
        stop.set()
        for t in spinners:
            t.join()


def test_default_worker_count(monkeypatch):
    monkeypatch.delenv("PYRUNTIME_WORKERS", raising=False)
    assert config.default_workers() == max(1, min(len(os.sched_getaffinity(0)), 32))
    monkeypatch.setenv("PYRUNTIME_WORKERS", "3")
    assert config.default_workers() == 3
    with SubprocPool() as p:
        assert p.wait_ready(20) and len(p.worker_pids) == 3
    monkeypatch.setenv("PYRUNTIME_WORKERS", "many")
    with pytest.raises(ValueError, match="PYRUNTIME_WORKERS"):
        config.default_workers()


def test_default_worker_count_follows_affinity():
    code = ("import os; os.sched_setaffinity(0, {0}); from pyruntime import config; "
            "print(config.default_workers())")
    env = {k: v for k, v in os.environ.items() if k != "PYRUNTIME_WORKERS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert out.stdout.strip() == "1", out.stderr


def test_sidecar_survives_worker_crash_loop_without_spinning():
    # A worker whose initializer kills it: the pool must fail jobs, not hang or fork-bomb.
    with SubprocPool(1, initializer=J.exit_now, initargs=(9,)) as p:
        fut = p.submit(J.add, 1, 1)
        assert fut.exception(20) is not None
        assert alive(p.sidecar_pid) or p.sidecar_pid is None
