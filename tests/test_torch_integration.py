"""pyruntime.torch against the installed torch (CPU build here): Inductor's
async compile on a pyruntime pool, TritonBundle conversion and export /
restore, and the subprocess FX-compile mode on pyruntime's out-of-process
child. Triton kernels are really compiled (for sm_90, no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyruntime.bundle.compat import installed_triton_abi

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from torch._inductor import async_compile as ac  # noqa: E402
from torch._inductor import config as iconfig  # noqa: E402
from torch._inductor import triton_bundler as tb  # noqa: E402
from torch._inductor.compile_worker.subproc_pool import SubprocException as TorchSubprocException  # noqa: E402

import pyruntime.torch as pt  # noqa: E402
import torch_jobs as TJ  # noqa: E402
from pyruntime.bundle.model import TritonBundle  # noqa: E402
from pyruntime.outofproc import cache_generation, child_state, run_out_of_process  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="class")
def _class_pool():
    """One pyruntime pool for a whole test class (its sidecar imports torch
    once): Inductor's pool replaced by 2 workers whose sidecar preloads the
    no-GPU shim."""
    with iconfig.patch(compile_threads=2):
        patch = pt.use_pyruntime_pool(preload=("torch_jobs",))
        try:
            yield patch
        finally:
            patch.restore()


@pytest.fixture
def patched(_class_pool, monkeypatch, tmp_path):
    """The class's patched pool, with this test's Triton and Inductor caches
    in tmp_path (Inductor sends them with every compile job)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    ac.CompiledTritonKernels.cache_clear()
    with iconfig.patch(compile_threads=2):
        yield _class_pool
    ac.CompiledTritonKernels.cache_clear()


def _files(root) -> dict[str, bytes]:
    return {k: v[0] for k, v in TJ.snapshot(str(root)).items()}


# ------------------------------------------------------------------ the seam
def test_import_pyruntime_does_not_import_torch():
    code = "import pyruntime, pyruntime.outofproc, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_patch_swaps_the_pool_and_restores_it(monkeypatch):
    original = ac.AsyncCompile.__dict__["process_pool"]
    original_threads = ac.AsyncCompile.__dict__["pool"]
    with iconfig.patch(compile_threads=2):
        with pt.use_pyruntime_pool() as patch:
            with pytest.raises(RuntimeError, match="already in effect"):
                pt.use_pyruntime_pool()
            pool = ac.AsyncCompile.process_pool()
            assert isinstance(pool, pt.InductorPool)
            assert ac.AsyncCompile.process_pool() is pool  # cached like Inductor's
            assert pool in ac._pool_set
            ac.AsyncCompile.wait_pool_ready(timeout=120)  # Inductor's readiness probe
            assert ac.AsyncCompile.use_process_pool()
            pid = pool.submit(TJ.getpid).result(timeout=60)
            assert pid != os.getpid()
            assert pt.active_patch() is patch
            assert ac.AsyncCompile.__dict__["pool"] is original_threads  # cpp=False leaves threads alone
        assert ac.AsyncCompile.__dict__["process_pool"] is original
        assert pt.active_patch() is None
        assert pool not in ac._pool_set
        with pytest.raises(RuntimeError):
            pool.submit(TJ.getpid)  # shut down with the patch
    assert not pt.restore_inductor_pool()


def test_inductor_shutdown_and_after_fork_paths_work_on_our_pool():
    with iconfig.patch(compile_threads=2), pt.use_pyruntime_pool() as patch:
        first = ac.AsyncCompile.process_pool()
        ac.shutdown_compile_workers()  # torch's own teardown: shuts ours down, clears the cache
        second = ac.AsyncCompile.process_pool()
        assert second is not first and isinstance(second, pt.InductorPool)
        assert second.submit(TJ.getpid).result(timeout=60) > 0
        assert len(patch.pools) == 2


# ----------------------------------------------------- Triton through the seam
def _compile_via_inductor(kernel_name: str, scale: int):
    """AsyncCompile.triton(), Inductor's real entry point, on the patched pool."""
    ac.AsyncCompile.wait_pool_ready(timeout=120)
    src = TJ.kernel_source(kernel_name, scale)
    lazy = ac.AsyncCompile().triton(kernel_name, src)
    assert lazy.future is not None, "Inductor compiled in-process instead of in the pool"
    kernel, elapsed_us = lazy.future.result(timeout=240)
    assert elapsed_us > 0
    return kernel


def _paths_relocated(files: dict[str, bytes], new_root, old_root) -> dict[str, bytes]:
    """Files restored under new_root, with their kernel paths spelled as under old_root."""
    out = {}
    for rel, data in files.items():
        if rel.endswith(".json"):
            data = data.replace(os.fsencode(str(new_root)), os.fsencode(str(old_root)))
        out[rel] = data
    return out


class TestOnOurPool:
    """Triton compiles through Inductor's real entry point on one shared pool."""

    def test_job_errors_are_inductor_subproc_exceptions(self, patched):
        fut = ac.AsyncCompile.process_pool().submit(TJ.failing_job, "no such kernel")
        with pytest.raises(TorchSubprocException) as ei:
            fut.result(timeout=60)
        assert "no such kernel" in str(ei.value)
        named = ei.value.with_name("triton_poi_x")  # Inductor's own error path
        assert "triton_poi_x" in str(named) and "no such kernel" in str(named)

    def test_inductor_triton_compile_runs_on_our_pool(self, patched, tmp_path):
        kernel = _compile_via_inductor("triton_poi_fused_mul_0", 3)
        keys = TJ.cache_keys(kernel)
        assert len(keys) >= 1  # one per autotuning config
        for key in keys:
            assert any(n.endswith(".cubin") for n in os.listdir(tmp_path / "triton" / key))
        assert patched.jobs >= 2  # the readiness probe and the compile
        # the same kernel compiled in-process gets the same cache keys
        assert TJ.compile_kernel("triton_poi_fused_mul_0", TJ.kernel_source("triton_poi_fused_mul_0", 3)) == keys

    def test_bundle_conversion_both_ways_and_restore(self, patched, tmp_path, monkeypatch):
        kernel = _compile_via_inductor("triton_poi_fused_mul_1", 5)
        keys = TJ.cache_keys(kernel)
        original = _files(tmp_path / "triton")
        # Inductor's bundler collects what the compile put
        with iconfig.patch(bundle_triton_into_fx_graph_cache=True):
            tb.TritonBundler.begin_compile()
            kernel.precompile(warm_cache_only=True)  # the parent's put() of each compiled config
            theirs, meta = tb.TritonBundler.collect()
        assert sorted(k.kernel_hash for k in theirs.kernel_artifacts) == sorted(keys)
        ours = pt.from_inductor_bundle(theirs)
        assert ours.targets == ["cuda:90"]
        again = TritonBundle.from_bytes(ours.to_bytes())  # through the data-only file format
        back = pt.to_inductor_bundle(again)
        assert isinstance(back, tb.TritonBundle)
        assert back.static_autotuners == []
        # Inductor restores our bundle into an empty cache: the same files
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "emitted"))
        with iconfig.patch(bundle_triton_into_fx_graph_cache=True):
            emitted = tb.TritonBundler.read_and_emit(back)
        assert sorted(emitted.cached_kernel_names) == sorted(meta.cached_kernel_names)
        assert _paths_relocated(_files(tmp_path / "emitted"), tmp_path / "emitted", tmp_path / "triton") == original
        # and pyruntime restores Inductor's bundle the same way
        result = pt.restore_triton_bundle(pt.from_inductor_bundle(theirs), tmp_path / "ours")
        assert sorted(result.restored) == sorted(keys)
        assert _paths_relocated(_files(tmp_path / "ours"), tmp_path / "ours", tmp_path / "triton") == original

    def test_recorded_kernels_export_and_restore_make_the_next_compile_a_cache_hit(self, patched, tmp_path, monkeypatch):
        with pt.record_triton_kernels() as rec:
            kernel = _compile_via_inductor("triton_poi_fused_mul_2", 7)
            kernel.precompile(warm_cache_only=True)  # the parent's put() (Inductor's bundling is off)
        assert [h for h, _d, _p in rec.entries] == TJ.cache_keys(kernel)
        assert tb.TritonBundler.__dict__["put"].__func__.__name__ != "recording_put"  # unpatched after
        path = tmp_path / "run.bundle"
        bundle = rec.save(path)
        assert len(bundle) == len(rec.entries)
        # the next run: an empty cache, the bundle restored first
        fresh = tmp_path / "fresh"
        monkeypatch.setenv("TRITON_CACHE_DIR", str(fresh))
        result = pt.restore_triton_bundle(path)
        assert sorted(result.restored) == sorted(TJ.cache_keys(kernel))
        before = TJ.snapshot(str(fresh))
        # a new process compiles the same kernel: every file is found, none written
        src = TJ.kernel_source("triton_poi_fused_mul_2", 7)
        keys = run_out_of_process(TJ.compile_kernel, "triton_poi_fused_mul_2", src)
        assert keys == TJ.cache_keys(kernel)
        assert TJ.snapshot(str(fresh)) == before
        # the recorded bundle carries this Python's ABI; one from another Python is
        # skipped on Inductor's default restore path too (Triton would miss it)
        assert bundle.triton_abi == installed_triton_abi()
        foreign = TritonBundle(bundle.kernel_artifacts, triton_version=bundle.triton_version,
                               triton_abi="cpython-399-x86_64-linux-gnu")
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "other"))
        with pytest.warns(RuntimeWarning, match="Python ABI"):
            skipped = pt.restore_triton_bundle(foreign)
        assert skipped.restored == [] and not (tmp_path / "other").exists() or \
            not any((tmp_path / "other").iterdir())

    def test_export_whole_cache(self, patched, tmp_path):
        kernel = _compile_via_inductor("triton_poi_fused_mul_3", 9)
        b = pt.export_triton_cache(tmp_path / "all.bundle", tmp_path / "triton")
        assert sorted(k.kernel_hash for k in b.kernel_artifacts) == sorted(TJ.cache_keys(kernel))
        assert TritonBundle.load(tmp_path / "all.bundle").kernel_names() == b.kernel_names()


def test_recorder_restores_put_when_nested():
    put = tb.TritonBundler.__dict__["put"]
    with pt.record_triton_kernels() as a:
        with pt.record_triton_kernels() as b:
            tb.TritonBundler.put("ABCDEF", 0)
        tb.TritonBundler.put("GHIJKL", 0)
    assert tb.TritonBundler.__dict__["put"] is put
    assert [e[0] for e in a.entries] == ["ABCDEF", "GHIJKL"]
    assert [e[0] for e in b.entries] == ["ABCDEF"]


# ------------------------------------------------------------ torch.compile
def _f(x, y):
    return torch.sin(x) * y + x.sum(dim=-1, keepdim=True)


@pytest.mark.slow
def test_torch_compile_same_results_on_our_pool():
    """CPU: Inductor builds C++; with cpp=True those builds run on our pool.
    Each compile in its own fresh cache, so both really compile."""
    from torch._inductor.utils import fresh_cache

    x, y = torch.randn(64, 32), torch.randn(64, 32)
    with iconfig.patch(compile_threads=2):
        with fresh_cache():
            torch._dynamo.reset()
            expected = torch.compile(_f)(x, y)
        with fresh_cache(), pt.use_pyruntime_pool(cpp=True) as patch:
            torch._dynamo.reset()
            got = torch.compile(_f)(x, y)
            assert patch.router is not None and patch.router.routed >= 1
    torch._dynamo.reset()
    assert torch.equal(got, expected)
    assert torch.allclose(got, _f(x, y), atol=1e-5)


@pytest.mark.slow
def test_fx_subprocess_mode_on_our_child(tmp_path, monkeypatch):
    """Inductor's subprocess FX compile on pyruntime's out-of-process child.
    The child keeps its caches between compiles and clears them exactly once
    after the parent's Inductor clear_caches()."""
    from torch._inductor import compile_fx
    from torch._inductor.utils import clear_caches

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    results, states = [], []
    # no FX graph cache: each step really compiles instead of loading from disk
    with iconfig.patch(fx_graph_cache=False), pt.use_pyruntime_fx_subprocess():
        assert compile_fx.fx_compile_mode == compile_fx.FxCompileMode.SUBPROCESS
        for step in range(3):
            if step == 1:
                gen = cache_generation()
                clear_caches()  # the parent clears Inductor's caches...
                assert cache_generation() > gen  # ...which bumps the generation
            torch._dynamo.reset()  # recompile; this alone clears nothing
            results.append(torch.compile(_f)(x, y))
            states.append(run_out_of_process(child_state))
    torch._dynamo.reset()
    assert compile_fx.fx_compile_mode == compile_fx._fx_compile_mode_default().mode  # restored
    assert len({s["pid"] for s in states}) == 1  # one child, reused
    assert states[1]["jobs"] - states[0]["jobs"] == 2  # the graph compile ran there (+ our probe)
    assert states[1]["clears"] - states[0]["clears"] == 1  # cleared for the new generation
    assert states[2]["clears"] == states[1]["clears"]  # and not again without one
    for r in results:
        assert torch.allclose(r, _f(x, y), atol=1e-5)
