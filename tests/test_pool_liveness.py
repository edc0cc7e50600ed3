"""SubprocPool liveness with real processes, pipes and signals: small pipes
and big results do not deadlock the pool, a worker that breaks the framing
of its result pipe is killed and replaced, and leaving a ``with`` block or
the interpreter stays bounded when a job is stuck.

Every test has a timeout, and a test that finds the pool wedged frees it by
killing the sidecar (its workers follow), so a regression fails instead of
hanging the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pool_jobs as J
from proc_util import alive, wait_gone
from pyruntime import BrokenPoolError, JobTimeoutError, ProtocolError, SubprocPool

GRACE = 0.5
MARGIN = 1.5  # scheduling slack on a loaded 2-core machine
TESTS = os.path.dirname(__file__)


def _free(sidecar_pid: int | None) -> None:
    """A wedged pool: kill its sidecar, so its workers die (PR_SET_PDEATHSIG),
    their pipes break and whatever blocked on them returns."""
    if sidecar_pid is not None and alive(sidecar_pid):
        os.kill(sidecar_pid, signal.SIGKILL)


# 1. one-page pipes, 32 workers, 8 MiB results, many submitters --------------
@pytest.mark.timeout(60)
def test_one_page_pipes_32_workers_8mib_results_many_submitters():
    """With pipes of one page (what an unprivileged user past
    pipe-user-pages-soft gets) a call item does not fit a job pipe and a
    result item does not fit a result pipe. Call items queued behind a
    running job must not block submit() while that worker blocks writing
    its result to a result thread that waits for the pool lock."""
    pool = SubprocPool(32, env={"PYRUNTIME_PIPE_SIZE": "4096"}, shutdown_grace=GRACE)
    side = pool.sidecar_pid
    wedged = True
    try:
        assert pool.wait_ready(30)
        assert pool.submit(J.pipe_sizes).result(10) == [4096, 4096]
        # quick jobs first: the pool then queues call items behind running jobs
        warm = [pool.submit(J.add, i, 1) for i in range(300)]
        assert [f.result(20) for f in warm] == [i + 1 for i in range(300)]
        pad = b"x" * 16384  # a call item four pages long
        big = 8 << 20
        got: list[int] = []
        errors: list[BaseException] = []

        def client() -> None:
            try:
                for _ in range(3):
                    futs = [pool.submit(J.blob, 8, pad) if i % 4 == 0 else pool.submit(J.length, pad)
                            for i in range(16)]
                    for i, f in enumerate(futs):
                        value = f.result(25)
                        got.append(len(value) if i % 4 == 0 else value)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, 30 - (time.monotonic() - start)))
        stuck = [t for t in threads if t.is_alive()]
        assert not stuck, f"{len(stuck)} of 8 submitting threads hung ({len(got)} of 384 results in)"
        assert not errors, f"{len(errors)} clients failed, first: {errors[0]!r}"
        assert sorted(got) == [16384] * 288 + [big] * 96
        wedged = False
        assert pool.submit(J.add, 2, 3).result(10) == 5
    finally:
        if wedged:
            _free(side)
        pool.shutdown(wait=True, cancel_futures=True, timeout=5)


# 2. a worker that breaks the framing of its result pipe ---------------------
@pytest.fixture
def pool2():
    p = SubprocPool(2, shutdown_grace=GRACE)
    yield p
    p.shutdown(wait=True, cancel_futures=True, timeout=5)


def _replaced(pool: SubprocPool, pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = pool.worker_pids
        if pid not in pids and len(pids) == 2:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.timeout(20)
def test_garbage_on_the_result_pipe_fails_the_job_and_replaces_the_worker(pool2):
    assert pool2.wait_ready(10)
    fut = pool2.submit(J.write_result_fd, b"this is not a frame header at all, just junk" * 4)
    try:
        with pytest.raises(ProtocolError, match=r"worker \(pid \d+\) running job write_result_fd sent a "
                                                r"malformed result item: bad frame magic") as info:
            fut.result(5)
    except BaseException:
        _free(pool2.sidecar_pid)
        raise
    assert "\n" not in str(info.value)
    bad = int(str(info.value).split("pid ")[1].split(")")[0])
    assert not wait_gone([bad], 5.0), "the worker that wrote garbage is still alive"
    assert _replaced(pool2, bad)
    assert [f.result(10) for f in [pool2.submit(J.add, i, i) for i in range(20)]] == [2 * i for i in range(20)]


@pytest.mark.timeout(20)
def test_garbage_then_a_stall_fails_at_once_and_the_pool_keeps_going(pool2):
    """Eight bytes of junk (less than a frame header), then the job sleeps:
    the caller must not wait for the rest of a header that is never valid,
    and the other worker's jobs must complete meanwhile."""
    assert pool2.wait_ready(10)
    start = time.monotonic()
    fut = pool2.submit(J.write_result_fd, b"garbage!", 30)
    others = [pool2.submit(J.add, i, 1) for i in range(50)]
    try:
        with pytest.raises(ProtocolError, match=r"running job write_result_fd sent a malformed result item"):
            fut.result(5)
        assert time.monotonic() - start < 5
        assert [f.result(5) for f in others] == [i + 1 for i in range(50)]
    except BaseException:
        _free(pool2.sidecar_pid)
        raise
    assert len(pool2.worker_pids) >= 1
    assert pool2.submit(J.add, 1, 2).result(10) == 3


@pytest.mark.timeout(20)
def test_result_item_for_another_job_is_a_protocol_error(pool2):
    assert pool2.wait_ready(10)
    fut = pool2.submit(J.forge_result, 987654321, 30)
    try:
        with pytest.raises(ProtocolError, match=r"sent a result item for job 987654321 while job \d+ runs"):
            fut.result(5)
    except BaseException:
        _free(pool2.sidecar_pid)
        raise
    assert pool2.submit(J.add, 1, 2).result(10) == 3


# 3. leaving a with block, or the interpreter, with a stuck job ---------------
@pytest.mark.timeout(20)
def test_with_block_left_by_an_exception_is_bounded_with_a_stuck_job():
    """A job that ignores SIGTERM and sleeps a minute; the block raises: the
    exit must not wait for the job, only for the teardown (shutdown_grace)."""
    start = None
    with pytest.raises(KeyError, match="boom"):
        with SubprocPool(1, shutdown_grace=GRACE) as p:
            fut = p.submit(J.ignore_sigterm_and_sleep, 60)
            queued = p.submit(J.add, 1, 2)
            assert p.wait_ready(10)
            time.sleep(0.3)  # the job is running and has ignored SIGTERM
            pids = [p.sidecar_pid, *p.worker_pids]
            start = time.monotonic()
            raise KeyError("boom")
    took = time.monotonic() - start
    assert took < GRACE + MARGIN, f"leaving the with block took {took:.2f} s"
    with pytest.raises(BrokenPoolError, match="shut down"):
        fut.result(1)
    assert queued.cancelled()
    assert not wait_gone(pids, 1.0)


@pytest.mark.timeout(20)
def test_with_block_normal_exit_waits_for_running_jobs():
    """The Executor contract: a block left normally waits for its jobs (a
    per-job timeout is what bounds a stuck one)."""
    with SubprocPool(2, shutdown_grace=GRACE) as p:
        ok = p.submit(J.sleep, 0.5, "done")
        stuck = p.submit(J.ignore_sigterm_and_sleep, 60, timeout=1.0)
        start = time.monotonic()
    took = time.monotonic() - start
    assert ok.result(0) == "done"
    assert stuck.exception(0) is not None and "timeout" in str(stuck.exception(0))
    assert took < 1.0 + GRACE + MARGIN, f"leaving the with block took {took:.2f} s"


@pytest.mark.timeout(20)
def test_shutdown_right_after_submit_runs_the_queued_jobs():
    """Workers still starting when the block ends: they must take the queued
    jobs, not have their job pipes closed as they come up."""
    with SubprocPool(2, shutdown_grace=GRACE) as p:
        futs = [p.submit(J.add, i, 1) for i in range(5)]
        start = time.monotonic()
    assert time.monotonic() - start < 10
    assert [f.result(0) for f in futs] == [i + 1 for i in range(5)]
    p2 = SubprocPool(1, shutdown_grace=GRACE)
    fut = p2.submit(J.add, 2, 2)
    p2.shutdown(wait=False)
    assert fut.result(10) == 4


STUCK_AT_EXIT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from pyruntime import SubprocPool
    import pool_jobs
    p = SubprocPool(2)
    p.wait_ready(20)
    fut = p.submit(pool_jobs.ignore_sigterm_and_sleep, 60)
    time.sleep(0.3)
    print(p.sidecar_pid, *p.worker_pids, flush=True)
    {then}
    """
)


def _run_to_exit(then: str, budget: float) -> tuple[float, list[int], subprocess.CompletedProcess]:
    env = dict(os.environ, PYRUNTIME_SHUTDOWN_GRACE=str(GRACE))
    code = STUCK_AT_EXIT.format(tests=TESTS, then=then)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    pids = [int(x) for x in proc.stdout.readline().split()]
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=budget + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _free(pids[0] if pids else None)
        out, err = proc.communicate()
        pytest.fail(f"the interpreter did not exit within {budget + 10:.0f} s ({then!r})")
    took = time.monotonic() - start
    assert len(pids) == 3, err
    return took, pids, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(30)
def test_interpreter_exit_with_a_stuck_job_is_bounded():
    # the exit hook gives running jobs shutdown_grace, then the teardown takes at most grace + 1 s
    budget = 2 * GRACE + 1.0 + MARGIN
    took, pids, res = _run_to_exit("pass", budget)
    assert res.returncode == 0, res.stderr
    assert took < budget, f"interpreter exit took {took:.2f} s"
    assert not wait_gone(pids, 1.0)


@pytest.mark.timeout(30)
def test_interpreter_exit_after_shutdown_without_wait_is_bounded():
    """shutdown(wait=False) waits for the stuck job on a background thread;
    the exit hook must cut that wait short, not join it forever."""
    budget = 2 * GRACE + 1.0 + MARGIN
    took, pids, res = _run_to_exit("p.shutdown(wait=False)", budget)
    assert res.returncode == 0, res.stderr
    assert took < budget, f"interpreter exit took {took:.2f} s"
    assert not wait_gone(pids, 1.0)


@pytest.mark.timeout(30)
def test_ctrl_c_while_a_with_block_waits_is_bounded():
    """The block is left normally and waits for the stuck job; Ctrl-C there
    must end the wait, tear the pool down within shutdown_grace and let the
    KeyboardInterrupt through, and the exit hook must not wait again."""
    env = dict(os.environ, PYRUNTIME_SHUTDOWN_GRACE=str(GRACE))
    code = textwrap.dedent(
        """
        import sys, time
        sys.path.insert(0, {tests!r})
        from pyruntime import SubprocPool
        import pool_jobs
        with SubprocPool(1) as p:
            p.wait_ready(20)
            fut = p.submit(pool_jobs.ignore_sigterm_and_sleep, 60)
            time.sleep(0.3)
            print(p.sidecar_pid, *p.worker_pids, flush=True)
        """
    ).format(tests=TESTS)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.5)  # inside __exit__, waiting for the job
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    budget = GRACE + 1.0 + MARGIN
    try:
        _out, err = proc.communicate(timeout=budget + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _free(pids[0])
        proc.communicate()
        pytest.fail(f"the interpreter did not exit within {budget + 10:.0f} s of Ctrl-C")
    took = time.monotonic() - start
    assert "KeyboardInterrupt" in err
    assert took < budget, f"exit took {took:.2f} s after Ctrl-C"
    assert not wait_gone(pids, 1.0)


@pytest.mark.timeout(60)
def test_a_timeout_fires_for_a_job_sent_to_an_idle_ready_pool():
    """The result thread of a ready, idle pool sleeps with no timer: a job
    submitted then must still be killed at its timeout (it used to run to
    its end, and long-job reports never came)."""
    seen = []
    with SubprocPool(2, long_job_threshold=0.2, on_long_job=seen.append) as p:
        assert p.wait_ready(30)
        t0 = time.monotonic()
        fut = p.submit(J.sleep, 5.0, "x", timeout=0.5)
        with pytest.raises(JobTimeoutError):
            fut.result(10)
        assert time.monotonic() - t0 < 3
        assert p.submit(J.sleep, 0.6, "y").result(10) == "y"
    assert [s["name"] for s in seen] == ["sleep", "sleep"]
