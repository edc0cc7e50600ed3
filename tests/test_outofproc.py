"""run_out_of_process: a reused SPAWN child, forwarded environment, the
cache-generation protocol, and crash recovery. Real processes throughout;
no torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import outofproc_jobs as J
from proc_util import wait_gone
from pyruntime import BrokenPoolError, WorkerDiedError, outofproc
from pyruntime.outofproc import (
    bump_cache_generation,
    cache_generation,
    register_clear_hook,
    run_out_of_process,
    shutdown_out_of_process,
    submit_out_of_process,
    unregister_clear_hook,
)
from pyruntime.pool import SubprocException

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _clean_hooks():
    yield
    for h in (J.counting_hook, J.broken_hook, J.cached_token, J.cached_scratch_dir):
        unregister_clear_hook(h)


def test_runs_in_another_reused_process():
    pid = run_out_of_process(J.getpid)
    assert pid != os.getpid()
    assert run_out_of_process(J.add, 2, 3, scale=4) == 20
    assert run_out_of_process(J.getpid) == pid  # one worker, reused
    assert submit_out_of_process(J.add, 1, 1).result(timeout=30) == 2
    assert outofproc.out_of_process_pool()._kind.value == "spawn"


def test_job_exception_carries_remote_traceback_and_cause():
    with pytest.raises(SubprocException) as ei:
        run_out_of_process(J.fail, "boom")
    assert isinstance(ei.value.__cause__, KeyError)
    assert "boom" in ei.value.remote_traceback
    assert ei.value.job_name.endswith("fail")  # the user's function, not the wrapper
    assert run_out_of_process(J.add, 1, 2) == 3  # the child survives


def test_cache_dirs_follow_the_caller(monkeypatch, tmp_path):
    run_out_of_process(J.getpid)  # child started before the variables change
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "t"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "i"))
    got = run_out_of_process(J.getenv, "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")
    assert got == {"TRITON_CACHE_DIR": str(tmp_path / "t"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "i")}
    monkeypatch.delenv("TRITON_CACHE_DIR")
    assert run_out_of_process(J.getenv, "TRITON_CACHE_DIR") == {"TRITON_CACHE_DIR": None}


def test_named_and_given_variables_reach_the_child_for_one_job(monkeypatch):
    monkeypatch.setenv("OOP_NAMED", "from-parent")
    got = run_out_of_process(J.getenv, "OOP_NAMED", "OOP_GIVEN", env=["OOP_NAMED"])
    assert got == {"OOP_NAMED": "from-parent", "OOP_GIVEN": None}
    got = run_out_of_process(J.getenv, "OOP_GIVEN", env={"OOP_GIVEN": "v"})
    assert got == {"OOP_GIVEN": "v"}
    # put back afterwards: the next job does not see it
    assert run_out_of_process(J.getenv, "OOP_GIVEN") == {"OOP_GIVEN": None}
    # None unsets a variable the child inherited
    monkeypatch.setenv("OOP_INHERITED", "x")
    shutdown_out_of_process()  # the new child's environment has it
    assert run_out_of_process(J.getenv, "OOP_INHERITED") == {"OOP_INHERITED": "x"}
    assert run_out_of_process(J.getenv, "OOP_INHERITED", env={"OOP_INHERITED": None}) == {"OOP_INHERITED": None}


@pytest.mark.parametrize("env, err", [
    ("OOP_X", TypeError), ({"": "v"}, ValueError), ({"A=B": "v"}, ValueError),
    ({"OOP_X": 3}, TypeError), ({"OOP_X": "a\0b"}, ValueError),
])
def test_bad_env_is_refused_before_anything_runs(env, err):
    with pytest.raises(err):
        run_out_of_process(J.getpid, env=env)


def test_caches_are_kept_until_the_generation_changes():
    before = run_out_of_process(J.state)
    t1 = run_out_of_process(J.token)
    assert run_out_of_process(J.token) == t1  # warm cache is kept between jobs
    register_clear_hook(J.cached_token)
    assert run_out_of_process(J.token) == t1  # registering alone clears nothing
    gen = bump_cache_generation()
    assert cache_generation() == gen
    t2 = run_out_of_process(J.token)
    assert t2 != t1
    assert run_out_of_process(J.token) == t2  # cleared once, not on every job
    after = run_out_of_process(J.state)
    assert after["pid"] == before["pid"]
    assert after["clears"] == before["clears"] + 1
    assert after["seen_generation"] == gen


def test_changed_cache_dir_clears_too(monkeypatch, tmp_path):
    register_clear_hook(J.cached_token)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "a"))
    t1 = run_out_of_process(J.token)
    assert run_out_of_process(J.token) == t1
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "b"))
    assert run_out_of_process(J.token) != t1


def test_stale_scratch_dir_problem_is_solved(monkeypatch, tmp_path):
    """The seed's failure: the child caches a directory, the caller deletes
    it while clearing its caches, the child's next job fails. With the
    generation bumped the child forgets the path and makes a new one."""
    monkeypatch.setenv("OOP_SCRATCH_ROOT", str(tmp_path))
    shutdown_out_of_process()  # a child that sees OOP_SCRATCH_ROOT
    register_clear_hook(J.cached_scratch_dir)
    first = run_out_of_process(J.write_scratch, "a.txt", "1")
    assert open(first).read() == "1"
    shutil.rmtree(os.path.dirname(first))  # the caller clears its caches...
    with pytest.raises(SubprocException) as ei:  # ...without telling the child
        run_out_of_process(J.write_scratch, "b.txt", "2")
    assert isinstance(ei.value.__cause__, FileNotFoundError)
    bump_cache_generation()  # ...and now telling it
    second = run_out_of_process(J.write_scratch, "b.txt", "2")
    assert os.path.dirname(second) != os.path.dirname(first)
    assert open(second).read() == "2"


def test_child_registered_hook_runs_once_per_generation():
    register_clear_hook(J.counting_hook)
    n0 = run_out_of_process(J.hook_calls)
    bump_cache_generation()
    assert run_out_of_process(J.hook_calls) == n0 + 1
    assert run_out_of_process(J.hook_calls) == n0 + 1
    bump_cache_generation()
    bump_cache_generation()  # two bumps between jobs: one clear
    assert run_out_of_process(J.hook_calls) == n0 + 2


def test_hook_must_be_importable():
    with pytest.raises(ValueError, match="module level"):
        register_clear_hook(lambda: None)
    with pytest.raises(TypeError):
        register_clear_hook(42)


def test_failing_hook_fails_the_job_and_is_retried():
    run_out_of_process(J.getpid)
    register_clear_hook(J.broken_hook)
    bump_cache_generation()
    with pytest.raises(SubprocException, match="broken_hook"):
        run_out_of_process(J.token)
    with pytest.raises(SubprocException, match="broken_hook"):  # still not cleared: retried
        run_out_of_process(J.token)
    unregister_clear_hook(J.broken_hook)
    clears = run_out_of_process(J.state)["clears"]  # this job cleared at last
    assert run_out_of_process(J.state)["clears"] == clears


def test_crash_fails_the_job_and_the_next_call_gets_a_fresh_child():
    pid = run_out_of_process(J.getpid)
    bump_cache_generation()
    with pytest.raises(WorkerDiedError, match=r"SIGSEGV.*fresh"):
        run_out_of_process(J.segfault)
    st = run_out_of_process(J.state)
    assert st["pid"] != pid
    assert st["clears"] == 0  # a fresh child has nothing to clear
    with pytest.raises(WorkerDiedError, match="exit code 3"):
        run_out_of_process(J.exit_now, 3)
    assert run_out_of_process(J.add, 1, 1) == 2
    assert wait_gone([pid], 5) == []


def test_shutdown_then_new_child():
    pid = run_out_of_process(J.getpid)
    shutdown_out_of_process()
    assert wait_gone([pid], 10) == []
    assert run_out_of_process(J.getpid) != pid


def test_pool_shut_down_directly_is_replaced():
    pid = run_out_of_process(J.getpid)
    outofproc.out_of_process_pool().shutdown(wait=True)
    assert run_out_of_process(J.getpid) != pid


def test_shutdown_with_timeout_fails_a_running_job_clearly():
    pid = run_out_of_process(J.getpid)
    slow = submit_out_of_process(time.sleep, 30)
    t0 = time.monotonic()
    shutdown_out_of_process(timeout=0.5)
    with pytest.raises(BrokenPoolError):
        slow.result(timeout=30)
    assert time.monotonic() - t0 < 10
    assert wait_gone([pid], 10) == []


def test_child_is_gone_after_interpreter_exit(tmp_path):
    """The pool is shut down at exit: no child outlives the caller."""
    script = textwrap.dedent("""
        import outofproc_jobs as J
        from pyruntime.outofproc import run_out_of_process
        import sys
        from pyruntime.outofproc import submit_out_of_process
        import time
        print(run_out_of_process(J.getpid)); sys.stdout.flush()
        submit_out_of_process(time.sleep, 60)  # still running at exit: bounded by the grace
        assert "torch" not in sys.modules
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    assert wait_gone([child], 10) == []
