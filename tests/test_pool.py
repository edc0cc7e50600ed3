"""SubprocPool semantics with real processes, pipes and signals (issue 3)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError, wait

import pytest

import pool_jobs as J
from proc_util import alive, children, open_fds, wait_gone
from pyruntime import (
    BrokenPoolError,
    SubprocException,
    SubprocKind,
    SubprocPool,
    WorkerDiedError,
)
from pyruntime._protocol import lookup_pickler

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    p = SubprocPool(2)
    yield p
    p.shutdown(wait=True, cancel_futures=True, timeout=5)


# 1. results and exceptions reach their own futures -------------------------
def test_results_reach_their_own_futures(pool):
    futs = [pool.submit(J.add, i, 1000) for i in range(200)]
    assert [f.result(10) for f in futs] == [i + 1000 for i in range(200)]
    assert list(pool.map(J.add, range(5), range(5))) == [0, 2, 4, 6, 8]


def test_job_exception_carries_remote_traceback(pool):
    fut = pool.submit(J.fail, "boom")
    with pytest.raises(SubprocException) as info:
        fut.result(10)
    err = info.value
    assert err.job_name == "fail"
    assert err.exc_type == "KeyError"
    assert "in fail" in err.remote_traceback and "raise KeyError(msg)" in err.remote_traceback
    assert isinstance(err.__cause__, KeyError)
    assert "Remote traceback" in str(err)
    renamed = err.with_name("other")
    assert renamed.job_name == "other" and renamed.remote_traceback == err.remote_traceback


def test_unpicklable_job_raises_in_submit(pool):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.submit(lambda: 1)
    with pytest.raises((pickle.PicklingError, TypeError)):
        pool.submit(J.echo, threading.Lock())
    assert pool.submit(J.add, 1, 2).result(10) == 3


def test_unpicklable_result_fails_only_its_future(pool):
    bad = pool.submit(J.unpicklable_result)
    good = pool.submit(J.add, 2, 2)
    with pytest.raises(SubprocException) as info:
        bad.result(10)
    assert info.value.job_name == "unpicklable_result"
    assert good.result(10) == 4


# 2. a dying worker fails only its own job ----------------------------------
@pytest.mark.parametrize(
    "job,args,expect",
    [
        (J.segfault, (), "signal 11 (SIGSEGV)"),
        (J.exit_now, (7,), "exit code 7"),
        (J.kill_self, (signal.SIGKILL,), "signal 9 (SIGKILL"),
    ],
    ids=["segfault", "os._exit", "sigkill"],
)
def test_worker_death_fails_only_its_job(pool, job, args, expect):
    assert pool.wait_ready(10)
    before = set(pool.worker_pids)
    others = [pool.submit(J.sleep, 0.05, i) for i in range(6)]
    doomed = pool.submit(job, *args)
    more = [pool.submit(J.add, i, 1) for i in range(20)]
    with pytest.raises(WorkerDiedError) as info:
        doomed.result(20)
    assert expect in str(info.value) and "job " in str(info.value)
    assert [f.result(20) for f in others] == list(range(6))
    assert [f.result(20) for f in more] == [i + 1 for i in range(20)]
    assert pool.wait_ready(10)
    assert set(pool.worker_pids) != before  # the dead one was replaced
    assert pool.submit(J.add, 40, 2).result(10) == 42


# 3. a dying sidecar fails everything fast, and the next submit restarts ----
def test_sidecar_death_fails_pending_within_a_second(pool):
    assert pool.wait_ready(10)
    futs = [pool.submit(J.sleep, 30) for _ in range(4)]
    time.sleep(0.2)
    old = pool.sidecar_pid
    start = time.monotonic()
    os.kill(old, signal.SIGKILL)
    done, not_done = wait(futs, timeout=1.0)
    assert not not_done, "pending futures did not fail within 1 s"
    assert time.monotonic() - start < 1.0
    for f in futs:
        with pytest.raises(BrokenPoolError, match="sidecar died with signal 9"):
            f.result()
    assert pool.submit(J.add, 1, 1).result(10) == 2  # a new sidecar
    assert pool.sidecar_pid != old and pool.restarts == 1


# 4. the caller dying takes the sidecar and workers along -------------------
CALLER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from pyruntime import SubprocPool
    import pool_jobs
    p = SubprocPool(3)
    p.wait_ready(20)
    fut = p.submit(pool_jobs.sleep, 60)  # one worker busy too
    time.sleep(0.2)
    print(p.sidecar_pid, *p.worker_pids, flush=True)
    time.sleep(60)
    """
)


def test_caller_sigkill_leaves_no_orphans():
    tests = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, "-c", CALLER.format(tests=tests)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 4 and all(alive(p) for p in pids)
    proc.kill()
    proc.wait()
    start = time.monotonic()
    left = wait_gone(pids, 1.0)
    assert not left, f"still alive {time.monotonic() - start:.2f} s after the caller died: {left}"


# 5. quiesce and wakeup -----------------------------------------------------
def test_quiesce_stops_workers_and_next_job_restarts_them(pool):
    assert pool.wait_ready(10)
    workers = pool.worker_pids
    sidecar = pool.sidecar_pid
    pool.quiesce()
    assert not wait_gone(workers, 5.0)
    assert alive(sidecar)
    assert pool.submit(J.add, 2, 3).result(10) == 5  # restarts them
    assert pool.sidecar_pid == sidecar
    assert not set(pool.worker_pids) & set(workers)
    pool.quiesce()
    pool.wakeup()
    assert pool.wait_ready(10)


def test_idle_timer_quiesces():
    with SubprocPool(2, quiesce=True, idle_timeout=0.3) as p:
        assert p.submit(J.add, 1, 1).result(10) == 2
        workers = p.worker_pids
        assert not wait_gone(workers, 5.0), "idle workers were not stopped"
        assert alive(p.sidecar_pid)
        assert p.submit(J.add, 1, 2).result(10) == 3


# 6. shutdown ----------------------------------------------------------------
def test_shutdown_leaves_no_processes_zombies_or_fds():
    fds = open_fds()
    p = SubprocPool(3)
    assert p.wait_ready(10)
    pids = [p.sidecar_pid, *p.worker_pids]
    futs = [p.submit(J.sleep, 0.2, i) for i in range(3)]
    queued = [p.submit(J.sleep, 5) for _ in range(10)]
    p.shutdown(wait=True, cancel_futures=True)
    assert [f.result() for f in futs] == [0, 1, 2]
    assert all(f.cancelled() for f in queued[3:])
    assert not wait_gone(pids, 2.0)
    assert not children(os.getpid()), "zombie or stray child left behind"
    assert open_fds() == fds
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(J.add, 1, 1)


def test_shutdown_with_timeout_fails_running_jobs():
    p = SubprocPool(1, shutdown_grace=0.5)
    fut = p.submit(J.sleep, 30)
    time.sleep(0.3)
    p.shutdown(wait=True, timeout=0.1)
    with pytest.raises(BrokenPoolError, match="shut down"):
        fut.result(1)


EXIT_WITHOUT_SHUTDOWN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pyruntime import SubprocPool
    import pool_jobs
    p = SubprocPool(2)
    assert p.submit(pool_jobs.add, 1, 2).result(10) == 3
    print(p.sidecar_pid, *p.worker_pids, flush=True)
    """
)


def test_interpreter_exit_cleans_up():
    tests = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_SHUTDOWN.format(tests=tests)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 3
    assert not wait_gone(pids, 2.0)


# 7. thread safety -----------------------------------------------------------
def test_many_threads_submitting_lose_nothing(pool):
    results: dict[int, list] = {}

    def client(t):
        futs = [pool.submit(J.add, t * 1000, i) for i in range(200)]
        results[t] = [f.result(30) for f in futs]

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(16))
    for t, got in results.items():
        assert got == [t * 1000 + i for i in range(200)]


# 8. warm pool and initializer -------------------------------------------------
def test_workers_start_at_construction_and_run_initializer():
    with SubprocPool(2, initializer=J.init_state, initargs=("ready",)) as p:
        assert p.wait_ready(10)
        assert len(p.worker_pids) == 2
        assert {p.submit(J.read_state).result(10) for _ in range(10)} == {"ready"}


def test_failing_initializer_breaks_the_pool_clearly():
    with SubprocPool(1, initializer=J.init_fail) as p:
        fut = p.submit(J.add, 1, 1)
        with pytest.raises(BrokenPoolError, match="initializer exploded"):
            fut.result(10)


def test_cancel_before_dispatch():
    with SubprocPool(1) as p:
        blocker = p.submit(J.sleep, 0.5, "done")
        queued = p.submit(J.add, 1, 1)
        assert queued.cancel()
        assert blocker.result(10) == "done"
        with pytest.raises(CancelledError):
            queued.result()


# sidecar configuration --------------------------------------------------------
def test_spawn_kind_works():
    with SubprocPool(2, kind=SubprocKind.SPAWN) as p:
        assert p.submit(J.add, 20, 22).result(30) == 42
        assert p.submit(J.getpid).result(10) in p.worker_pids


def test_callers_sys_path_and_env_reach_workers(tmp_path, monkeypatch):
    (tmp_path / "late_module.py").write_text("def hello():\n    return 'from a late path'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_module

    with SubprocPool(1, env={"PYRUNTIME_TEST_VAR": "xyz"}) as p:
        assert p.submit(late_module.hello).result(10) == "from a late path"
        assert p.submit(J.getenv, "PYRUNTIME_TEST_VAR").result(10) == "xyz"


def test_worker_output_goes_to_log_file(tmp_path):
    log = tmp_path / "workers.log"
    with SubprocPool(1, log_file=log) as p:
        assert p.submit(J.say, "hello-from-worker").result(10)
    text = log.read_text()
    assert "hello-from-worker\n" in text and "hello-from-worker-err" in text


def test_custom_pickler_is_used_and_checked():
    with SubprocPool(1, pickler=J.CountingPickler()) as p:
        assert p.submit(J.add, 1, 2).result(10) == 3
    with pytest.raises(TypeError, match="not a subclass"):
        lookup_pickler("builtins:dict")


def test_sidecar_exits_when_parent_pid_does_not_match():
    out = subprocess.run(
        [sys.executable, "-m", "pyruntime.compile_worker", "--pickler=pyruntime._protocol:SubprocPickler",
         "--workers=1", "--parent=1", "--read-fd=0", "--write-fd=0"],
        capture_output=True, timeout=20,
    )
    assert out.returncode == 0 and out.stderr == b""


def test_quiesce_before_workers_are_up_does_not_strand_queued_jobs():
    # Inductor quiesces its pool after a compile; a job queued while the
    # workers were still starting must run, and shutdown must not hang.
    p = SubprocPool(2, preload=("slow_preload",))
    fut = p.submit(J.add, 1, 2)
    p.quiesce()
    assert fut.result(10) == 3
    assert not wait_gone(p.worker_pids, 5.0)  # then the workers did stop
    p.shutdown(wait=True, timeout=10)


def test_partial_jobs_are_named_after_their_function(pool):
    import functools

    with pytest.raises(SubprocException) as info:
        pool.submit(functools.partial(J.fail, "x")).result(10)
    assert info.value.job_name == "fail"
