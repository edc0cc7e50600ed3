"""precompile: real Triton builds for cuda:90 (no GPU needed) in worker pools."""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import re
from pathlib import Path

import pytest

from pyruntime.kernels import KernelSpec, TargetError
from pyruntime.precompile import PrecompileResult, ProgressBar, precompile, warm_worker

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    from precompile_kernels import write_sources

    return write_sources(tmp_path_factory.mktemp("kernel_sources"))


@pytest.fixture(scope="module")
def process_pool():
    # the fallback pool precompile uses without SubprocPool: spawn, warm workers
    pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=warm_worker)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def first_run(sources, process_pool, tmp_path_factory):
    from precompile_kernels import broken_spec, good_specs

    cache = tmp_path_factory.mktemp("cache")
    specs = good_specs(sources)
    specs.insert(2, broken_spec(sources))
    results = precompile(specs, pool=process_pool, cache_dir=cache)
    return specs, cache, results


def test_one_result_per_spec_in_order(first_run) -> None:
    specs, _, results = first_run
    assert len(results) == 6
    assert [r.spec for r in results] == specs
    assert all(isinstance(r, PrecompileResult) for r in results)


def test_broken_kernel_carries_tritons_diagnostic(first_run) -> None:
    _, _, results = first_run
    broken = results[2]
    assert not broken.ok and broken.status == "failed"
    assert broken.label == "broken" and broken.target == "cuda:90"
    assert broken.cache_key is None
    err = broken.error
    assert err.startswith("CompilationError: at 3:27:")
    # the source line, a caret under the fault, and the reason
    assert "tl.store(x_ptr + offs, missing_name * 2, mask=offs < n)" in err
    assert "\n" + " " * 27 + "^" in err
    assert "missing_name is not defined" in err
    assert "Traceback" in broken.traceback and "compile_spec" in broken.traceback


def test_other_kernels_built(first_run) -> None:
    _, cache, results = first_run
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(r.ok and r.status == "compiled" and not r.cached for r in good), [r.error for r in good]
    assert [r.name for r in good] == ["scale_add", "scale_add", "row_max", "row_max", "tuned_copy"]
    assert len({r.cache_key for r in good}) == 5  # distinct specs, distinct kernels
    for r in good:
        assert r.target == "cuda:90" and r.compile_time_s > 0
        assert r.path == os.path.join(str(cache), r.cache_key)
        files = os.listdir(r.path)
        assert f"__grp__{r.name}.json" in files and f"{r.name}.cubin" in files
        assert len(r.hash) == 64
        assert r.worker_pid not in (None, os.getpid())
    assert good[1].metadata["num_warps"] == 8 and good[3].metadata["num_warps"] == 2


def test_second_run_reports_already_cached(first_run, process_pool) -> None:
    specs, cache, results = first_run
    again = precompile(specs, pool=process_pool, cache_dir=cache)
    for before, after in zip(results, again, strict=True):
        if before.ok:
            assert after.ok and after.cached and after.status == "cached"
            assert after.cache_key == before.cache_key
            assert after.compile_time_s < 5
        else:
            assert not after.ok and "missing_name" in after.error
    # the caller's pool is left running
    assert process_pool.submit(os.getpid).result(timeout=60) != os.getpid()


def test_knobs_reach_the_workers(first_run, process_pool) -> None:
    specs, cache, _ = first_run
    forced = precompile(specs[:1], pool=process_pool, cache_dir=cache,
                        extra_config={"compilation.always_compile": True})
    assert forced[0].ok and not forced[0].cached


def test_results_are_recorded_by_the_bundler(first_run, process_pool, monkeypatch) -> None:
    bundler = pytest.importorskip("pyruntime.bundle.collect")
    TB = bundler.TritonBundler
    specs, cache, results = first_run
    monkeypatch.setenv("PYRUNTIME_BUNDLE", "1")
    TB.begin_compile()
    try:
        precompile(specs, pool=process_pool, cache_dir=cache)
        bundle, meta = TB.collect()
    finally:
        TB.end_compile()
    recorded = {k.kernel_hash for k in bundle.kernel_artifacts}
    assert set(meta.cached_kernel_names) == {r.name for r in results if r.ok}
    assert {k.target for k in bundle.kernel_artifacts} == {"cuda:90"}
    assert recorded == {r.cache_key for r in results if r.ok}
    # not recording: nothing is noted and nothing fails
    monkeypatch.setenv("PYRUNTIME_BUNDLE", "0")
    assert all(r.ok for r in precompile(specs[:1], pool=process_pool, cache_dir=cache))


def test_fn_spec_found_through_python_path(process_pool, tmp_path: Path) -> None:
    from precompile_kernels import GOOD_SOURCE

    pkg = tmp_path / "launcher_src" / "launcher_ops"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "kernels.py").write_text(GOOD_SOURCE)
    spec = KernelSpec(fn="launcher_ops.kernels:row_max", python_path=[str(tmp_path / "launcher_src")],
                      signature={"x_ptr": "*bf16", "out_ptr": "*fp32", "stride": "i32", "n_cols": "i32"},
                      constexprs={"BLOCK": 64})
    (r,) = precompile([spec], pool=process_pool, cache_dir=tmp_path / "cache")
    assert r.ok and r.name == "row_max", r.error
    missing = KernelSpec(fn="launcher_ops_absent.kernels:row_max", signature=spec.signature,
                         constexprs={"BLOCK": 64})
    (r,) = precompile([missing], pool=process_pool, cache_dir=tmp_path / "cache")
    assert r.error == ("RuntimeError: Failed to import launcher_ops_absent.kernels\n"
                       "ModuleNotFoundError: No module named 'launcher_ops_absent'")


def test_argument_errors(sources, tmp_path: Path) -> None:
    from precompile_kernels import good_specs

    specs = good_specs(sources)
    with cf.ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="either workers or pool"):
        precompile(specs, workers=2, pool=pool, cache_dir=tmp_path)
    with pytest.raises(TypeError, match=r"specs\[1\] is a dict"):
        precompile([specs[0], {"fn": "m:k"}], workers=1, cache_dir=tmp_path)
    assert precompile([], workers=1, cache_dir=tmp_path) == []


def test_local_target_without_gpu_fails_before_building(sources, tmp_path: Path) -> None:
    from triton.runtime.driver import driver

    try:
        driver.active.get_current_target()
        pytest.skip("this machine has a GPU")
    except Exception:
        pass
    from precompile_kernels import good_specs

    specs = [good_specs(sources)[0].with_target("local")]
    with pytest.raises(TargetError, match="target 'local' means the GPU of this machine"):
        precompile(specs, workers=1, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_subproc_pool_worker_death_fails_only_that_kernel(sources, tmp_path: Path) -> None:
    pytest.importorskip("pyruntime.pool")
    from precompile_kernels import crash_spec, good_specs

    specs = good_specs(sources)[:2] + [crash_spec(sources)] + good_specs(sources)[2:3]
    results = precompile(specs, workers=2, cache_dir=tmp_path, pool_kind="subproc")
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error.startswith("WorkerDiedError: ") and "exit code 7" in results[2].error, results[2].error


def test_process_pool_breakage_is_retried_in_lanes(sources, tmp_path: Path) -> None:
    from precompile_kernels import crash_spec, good_specs

    specs = good_specs(sources)[:2] + [crash_spec(sources)] + good_specs(sources)[2:3]
    results = precompile(specs, workers=2, cache_dir=tmp_path, pool_kind="process")
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error.startswith("the compile worker died while building this kernel")


def _result(status: str, label: str = "k") -> PrecompileResult:
    spec = KernelSpec(fn="m:k", name=label)
    return PrecompileResult(spec=spec, target="cuda:90", cached=status == "cached",
                            error="boom" if status == "failed" else None)


def test_progress_bar_plain_stream() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, every_s=0.0, tty=False)
    bar.start(3)
    for s in ("compiled", "cached", "failed"):
        bar.update(_result(s))
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "precompile: 3 kernels"
    assert "\r" not in out.getvalue()
    assert re.fullmatch(r"\[#{24}\] 3/3  \d+\.\ds  compiled 1  cached 1  failed 1", lines[-1])
    assert len(lines) == 5  # header, one line per update (every_s=0), closing line


def test_progress_bar_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, tty=True)
    bar.start(2)
    bar.update(_result("compiled", "first_kernel"))
    bar.update(_result("compiled", "second"))
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.startswith("\r[------------------------] 0/2  0.0s  compiled 0")
    assert re.search(r"\r\[#{12}-{12}\] 1/2  \d+\.\ds  compiled 1  cached 0  failed 0  first_kernel", text)
    assert re.search(r"\r\[#{24}\] 2/2  \d+\.\ds  compiled 2  cached 0  failed 0\x1b\[K\n$", text)
