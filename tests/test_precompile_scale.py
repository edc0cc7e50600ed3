"""precompile at fleet scale, with real processes: kernel modules imported
once (in the sidecar; once per Dask worker process), a Dask LocalCluster of
two worker processes (one killed mid-build), resume after Ctrl-C, failure
isolation, bounded submission. Real Triton builds for cuda:90 (no GPU)."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyruntime.executors import ExecutorError, parse_executor, run_windowed
from pyruntime.kernels import KernelSpec
from pyruntime.precompile import PrecompileResult, precompile
from pyruntime.precompile_report import JOURNAL_NAME, Journal, ScaleProgress

import scale_kernels as K

pytestmark = pytest.mark.timeout(180)


def _cli(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PYRUNTIME_BUNDLE", None)
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return subprocess.Popen([sys.executable, "-m", "pyruntime", "precompile", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _complete(kernel_dir: str | None) -> bool:
    return bool(kernel_dir) and any(n.startswith("__grp__") for n in os.listdir(kernel_dir))


# ------------------------------------------------------------ no builds


def test_parse_executor() -> None:
    assert str(parse_executor("local")) == "local"
    d = parse_executor("dask://sched.example:8786")
    assert d.kind == "dask" and d.address == "tcp://sched.example:8786"
    assert parse_executor("dask://tls://10.0.0.1:8786").address == "tls://10.0.0.1:8786"
    n = parse_executor("dask-local:3")
    assert n.kind == "dask-local" and n.workers == 3 and str(n) == "dask-local:3"
    for bad in ("dask-local:0", "dask-local:x", "dask://nohost", "ray://x:1", "dask://h:99999"):
        with pytest.raises(ExecutorError, match=re.escape(repr(bad))):
            parse_executor(bad)


def test_run_windowed_keeps_the_window() -> None:
    lock = threading.Lock()
    live = [0, 0]  # now, most

    def job(i: int) -> int:
        with lock:
            live[0] += 1
            live[1] = max(live[1], live[0])
        time.sleep(0.01)
        with lock:
            live[0] -= 1
        return i

    with cf.ThreadPoolExecutor(8) as ex:
        got = sorted(f.result() for _, f in run_windowed(50, lambda i: ex.submit(job, i), window=3))
    assert got == list(range(50)) and live[1] <= 3

    def refuse(i: int) -> cf.Future:
        raise cf.BrokenExecutor("gone")

    outs = list(run_windowed(4, refuse, window=2))
    assert len(outs) == 4 and all(isinstance(f.exception(), cf.BrokenExecutor) for _, f in outs)


def test_progress_shows_rate_eta_and_resumed() -> None:
    out = io.StringIO()
    bar = ScaleProgress(out, every_s=0.0, tty=False)
    bar.start(10)
    spec = KernelSpec(fn="m:k", name="k")
    bar.update(PrecompileResult(spec=spec, target="cuda:90", cached=True, resumed=True))
    bar.start_t -= 2.0  # two seconds in
    bar.update(PrecompileResult(spec=spec, target="cuda:90"))
    bar.update(PrecompileResult(spec=spec, target="cuda:90"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "precompile: 10 kernels"
    assert lines[1].endswith("] 1/10  0.0s  compiled 0  cached 0  failed 0  resumed 1")  # no rate yet
    assert re.fullmatch(r"\[#{7}-{17}\] 3/10  2\.0s  compiled 2  cached 0  failed 0  resumed 1  "
                        r"(0\.99|1\.00)/s  ETA 7s", lines[-1]), lines
    done = io.StringIO()
    bar = ScaleProgress(done, every_s=0.0, tty=False)
    bar.start(1)
    bar.update(PrecompileResult(spec=spec, target="cuda:90"))
    bar.close()
    assert re.fullmatch(r"\[#{24}\] 1/1  \d\.\ds  compiled 1  cached 0  failed 0", done.getvalue().splitlines()[-1])


def test_journal_trusts_only_what_is_unchanged(tmp_path: Path) -> None:
    mod = K.write_module(tmp_path / "src", "journaled")
    (spec,) = K.specs(tmp_path / "src", "journaled", 1)
    cache = tmp_path / "cache"
    (cache / "KEY").mkdir(parents=True)
    (cache / "KEY" / "__grp__axpy_kernel.json").write_text("{}")
    j = Journal(cache)
    j.record(PrecompileResult(spec=spec, target=spec.target, name="axpy_kernel", cache_key="KEY",
                              source_file=str(mod)))
    j.record(PrecompileResult(spec=spec, target=spec.target, error="boom"))  # never journaled
    j.close()
    assert len((cache / JOURNAL_NAME).read_text().splitlines()) == 1
    r = Journal(cache).lookup(spec)
    assert r is not None and r.resumed and r.cached and r.cache_key == "KEY" and r.path == str(cache / "KEY")
    assert Journal(cache, read=False).lookup(spec) is None
    assert Journal(cache).lookup(spec.with_target("cuda:80")) is None
    # the kernel's file changed: build again
    mod.write_text(mod.read_text() + "\n# edited\n")
    assert Journal(cache).lookup(spec) is None


def test_import_pyruntime_imports_no_dask_torch_or_triton() -> None:
    code = ("import sys, pyruntime, pyruntime.precompile, pyruntime.executors, pyruntime.precompile_report; "
            "print(sorted(m for m in ('dask', 'distributed', 'torch', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------ the local pool


def test_local_pool_imports_kernel_modules_once_in_the_sidecar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    K.write_module(src, "once_local")
    # refuses the sidecar (a child of this process), imports fine in the workers it forks
    K.write_module(src, "refuses_sidecar", refuse_under=os.getpid())
    specs = K.specs(src, "once_local", 6) + K.specs(src, "refuses_sidecar", 4)
    results = precompile(specs, workers=2, cache_dir=tmp_path / "cache", host_code=False)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    workers = {r.worker_pid for r in results}
    side = [m for m in results.imports if m["where"] == "sidecar"]
    # triton's packages first (so the sidecar can hash libtriton on a thread meanwhile), then the list's
    assert [m["module"] for m in side] == ["triton", "once_local", "refuses_sidecar"]
    (ok,) = [m for m in side if m["module"] == "once_local"]
    assert ok["error"] is None and ok["seconds"] > 0 and ok["pid"] not in workers
    # once, in the sidecar, whatever the number of workers
    assert K.imports_of(src, "once_local") == [ok["pid"]]
    assert all(r.import_s == 0 for r in results[:6])
    # the fallback: each worker that built the refused module imported it itself, once
    (bad,) = [m for m in side if m["module"] == "refuses_sidecar"]
    assert "refuses to be imported" in bad["error"]
    fell_back = [m for m in results.imports if m["module"] == "refuses_sidecar" and m["where"] == "worker"]
    by_workers = sorted(K.imports_of(src, "refuses_sidecar"))
    assert by_workers == sorted(m["pid"] for m in fell_back) and set(by_workers) <= workers
    assert sum(r.import_s > 0 for r in results[6:]) == len(by_workers)
    assert all(r.compile_time_s > 0 and _complete(r.path) for r in results)


# ------------------------------------------------------------ Dask


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_workers_import_once_per_process_and_ship_kernels_back(dask_client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    K.write_module(src, "once_dask")
    specs = K.specs(src, "once_dask", 8)
    cache = tmp_path / "cache"
    results = precompile(specs, executor=dask_client.get_executor(pure=False), cache_dir=cache, host_code=False)
    assert all(r.ok and r.status == "compiled" for r in results), [r.error for r in results if not r.ok]
    dask_pids = set(dask_client.run(os.getpid).values())
    pids = K.imports_of(src, "once_dask")
    assert len(pids) == len(set(pids)) and set(pids) == {r.worker_pid for r in results} <= dask_pids
    assert sorted(m["pid"] for m in results.imports) == sorted(pids)
    assert all(m["where"] == "worker" for m in results.imports)
    for r in results:  # written here, under this cache, complete
        assert r.path == str(cache / r.cache_key) and _complete(r.path)
        assert r.worker_pid != os.getpid()


def test_dask_worker_killed_mid_build_costs_a_retry(dask_client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    K.write_module(src, "slow_dask", sleep_s=4.0)  # each worker process's first build takes > 4 s
    specs = K.specs(src, "slow_dask", 3)
    cache = tmp_path / "cache"
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", precompile(
        specs, executor=dask_client.get_executor(pure=False), cache_dir=cache, host_code=False)))
    t.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        busy = [w for w, keys in dask_client.processing().items() if keys]
        if busy:
            victim = dask_client.run(os.getpid, workers=[busy[0]])[busy[0]]
        time.sleep(0.1)
    assert victim is not None
    while victim not in K.imports_of(src, "slow_dask") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim in K.imports_of(src, "slow_dask")
    time.sleep(0.3)  # inside the slow import now, mid-build
    os.kill(victim, signal.SIGKILL)
    t.join(120)
    results = box["r"]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert victim not in {r.worker_pid for r in results}
    assert all(_complete(r.path) for r in results)


def test_cli_on_a_running_dask_scheduler(dask_client, tmp_path: Path) -> None:
    K.write_module(tmp_path, "on_scheduler")
    (tmp_path / "k.toml").write_text(K.toml_list(tmp_path, "on_scheduler", 3))
    address = dask_client.scheduler.address  # tcp://127.0.0.1:PORT
    proc = _cli(tmp_path, "k.toml", "--executor", "dask://" + address.split("://", 1)[1], "--cache-dir", "cache",
                "--no-host-code", "-q")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert re.search(r"  compiled\s+3\n", out) and f"dask://{address.split('://', 1)[1]}, 2 workers" in out
    assert len(K.imports_of(tmp_path, "on_scheduler")) <= 2  # once per worker process that built one
    # the CLI closed its client, not the cluster
    assert len(dask_client.scheduler_info()["workers"]) == 2


# ------------------------------------------------------------ the CLI


def test_cli_resumes_after_ctrl_c(tmp_path: Path) -> None:
    K.write_module(tmp_path, "resumable")
    (tmp_path / "k.toml").write_text(K.toml_list(tmp_path, "resumable", 16))
    proc = _cli(tmp_path, "k.toml", "--workers", "1", "--cache-dir", "cache", "--json", "first.jsonl",
                "--no-host-code")
    stream = tmp_path / "first.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = stream.read_text().splitlines() if stream.exists() else []
        if sum('"kind": "result"' in x for x in lines) >= 3:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted: " in out and "the same command resumes" in out and "Traceback" not in err
    lines = [json.loads(x) for x in stream.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[-1]["kind"] == "summary" and lines[-1]["interrupted"]
    built = [x for x in lines if x["kind"] == "result"]
    assert 3 <= len(built) < 16 and all(x["status"] == "compiled" for x in built)
    journaled = (tmp_path / "cache" / JOURNAL_NAME).read_text().splitlines()
    assert len(journaled) == len(built)

    again = _cli(tmp_path, "k.toml", "--workers", "1", "--cache-dir", "cache", "--json", "second.json",
                 "--no-host-code", "-q")
    out, err = again.communicate(timeout=150)
    assert again.returncode == 0, out + err
    doc = json.loads((tmp_path / "second.json").read_text())
    status = [r["status"] for r in doc["results"]]
    assert status.count("resumed") == len(built) and doc["counts"]["resumed"] == len(built)
    assert status.count("resumed") + status.count("compiled") + status.count("cached") == 16
    assert {r["cache_key"] for r in doc["results"] if r["status"] == "resumed"} == {x["cache_key"] for x in built}
    assert re.search(rf"  of them resumed\s+{len(built)}\n", out)
    assert re.search(r"\nimports: triton, resumable once in the sidecar before the workers forked \(\d+\.\d\d s\)\n",
                     out), out


def test_cli_dask_local_one_bad_kernel_the_rest_build(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from precompile_kernels import write_sources

    write_sources(tmp_path)
    K.write_module(tmp_path, "with_broken")
    broken = ('\n[[kernels]]\nname = "broken"\nsource = "broken_kernels.py"\nfunction = "broken_kernel"\n'
              'signature = { x_ptr = "*fp32", n = "i32" }\nconstexprs = { BLOCK = 64 }\n')
    (tmp_path / "k.toml").write_text(K.toml_list(tmp_path, "with_broken", 4, extra=broken))
    proc = _cli(tmp_path, "k.toml", "--executor", "dask-local:2", "--cache-dir", "cache", "--json", "out.json",
                "--no-host-code")
    out, err = proc.communicate(timeout=170)
    assert proc.returncode == 1, out + err
    assert out.startswith("precompile: 5 kernels for cuda:90, dask-local:2, 2 workers")
    assert "failed kernels (1):\n  broken (cuda:90)\n    CompilationError" in out
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["executor"] == "dask-local:2" and doc["counts"] == {"compiled": 4, "cached": 0, "resumed": 0,
                                                                   "failed": 1}
    for r in doc["results"][:4]:
        assert r["path"] == str(tmp_path / "cache" / r["cache_key"]) and _complete(r["path"])
    # the workers forked from a fork server that imported the kernel module once
    assert {m["where"] for m in doc["imports"]} == {"forkserver"}, doc["imports"]
    pids = K.imports_of(tmp_path, "with_broken")
    assert len(pids) == 1 and pids[0] not in {r["worker_pid"] for r in doc["results"]}, pids
    assert all(r["import_s"] == 0 for r in doc["results"])
    assert re.search(r"\nimports: .*with_broken.* once in the Dask fork server before the workers forked", out), out

    bad = _cli(tmp_path, "k.toml", "--executor", "dask-local:0")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and err.startswith("pyruntime: error: --executor 'dask-local:0': expected")


def test_cli_dask_local_falls_back_when_a_module_kills_the_fork_server(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    K.write_module(tmp_path, "kills_server", exit_in_forkserver=True)
    (tmp_path / "k.toml").write_text(K.toml_list(tmp_path, "kills_server", 3))
    proc = _cli(tmp_path, "k.toml", "--executor", "dask-local:2", "--cache-dir", "cache", "--json", "out.json",
                "--no-host-code")
    out, err = proc.communicate(timeout=170)
    assert proc.returncode == 0, out + err
    assert "the Dask fork server did not start with the kernel modules preloaded" in err, err
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["counts"]["compiled"] == 3 and {m["where"] for m in doc["imports"]} == {"worker"}


class _RefusingExecutor(cf.Executor):
    """An executor that is shut down: every submit raises, as a broken pool's does."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        raise RuntimeError("cannot schedule new futures after shutdown")


@pytest.mark.timeout(60)
def test_an_executor_that_refuses_every_job_fails_each_kernel_and_raises_nothing(tmp_path: Path) -> None:
    K.write_module(tmp_path, "refused")
    specs = K.specs(tmp_path, "refused", 3)
    results = precompile(specs, executor=_RefusingExecutor(), cache_dir=str(tmp_path / "cache"), host_code=False)
    assert len(results) == 3 and not any(r.ok for r in results)
    assert all("cannot schedule new futures" in (r.error or "") for r in results), [r.error for r in results]
    assert K.imports_of(tmp_path, "refused") == []
