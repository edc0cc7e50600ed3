"""``python -m pyruntime precompile`` end to end, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

KERNELS = """\
target = "cuda:80"
python_path = ["."]

[defaults]
options = {{ num_warps = 4 }}

[[kernels]]
source = "good_kernels.py"
function = "scale_add"
signature = {{ x_ptr = "*fp32", y_ptr = "*fp32", out_ptr = "*fp32", alpha = "fp32", n = "i32" }}
divisibility = ["x_ptr", "out_ptr"]
[[kernels.variants]]
constexprs = {{ BLOCK = 128 }}
[[kernels.variants]]
constexprs = {{ BLOCK = 512, RELU = true }}
options = {{ num_warps = 8 }}

[[kernels]]
name = "row_max_fp16"
source = "good_kernels.py"
function = "row_max"
signature = {{ x_ptr = "*fp16", out_ptr = "*fp32", stride = "i32", n_cols = "i32" }}
constexprs = {{ BLOCK = 256 }}
{extra}
"""

BROKEN = """
[[kernels]]
name = "broken"
source = "broken_kernels.py"
function = "broken_kernel"
signature = { x_ptr = "*fp32", n = "i32" }
constexprs = { BLOCK = 64 }
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    from precompile_kernels import write_sources

    write_sources(tmp_path)
    (tmp_path / "good.toml").write_text(KERNELS.format(extra=""))
    (tmp_path / "mixed.toml").write_text(KERNELS.format(extra=BROKEN))
    return tmp_path


def _run(workdir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYRUNTIME_BUNDLE", None)
    return subprocess.run([sys.executable, "-m", "pyruntime", "precompile", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _table(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"  (compiled|already cached|failed|wall time|sum of kernel times|speed-up|throughput)"
                         r"\s+(\S.*)", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_failure_exits_nonzero_with_summary_and_diagnostic(workdir: Path) -> None:
    out = _run(workdir, "mixed.toml", "--target", "cuda:90", "--workers", "2", "--cache-dir", "cache",
               "--json", "results.json", "--bundle", "never.bundle")
    assert out.returncode == 1, out.stderr
    rows = _table(out.stdout)
    assert rows["compiled"] == "3" and rows["already cached"] == "0" and rows["failed"] == "1"
    assert rows["wall time"].endswith(" s") and rows["sum of kernel times"].endswith(" s")
    assert re.fullmatch(r"\d+\.\d\dx", rows["speed-up"]) and rows["throughput"].endswith("kernels/s")
    assert out.stdout.startswith(f"precompile: 4 kernels for cuda:90, 2 workers, cache {workdir / 'cache'}")
    assert "failed kernels (1):\n  broken (cuda:90)\n    CompilationError: at 3:27:" in out.stdout
    assert "missing_name is not defined" in out.stdout
    assert "bundle: not written (1 kernels failed)" in out.stdout
    assert not (workdir / "never.bundle").exists()
    # progress goes to stderr; not a terminal here, so plain lines
    assert "precompile: 4 kernels" in out.stderr
    assert re.search(r"\[#{24}\] 4/4  \d+\.\ds  compiled 3  cached 0  failed 1\n", out.stderr)
    assert "\r" not in out.stderr and "Traceback" not in out.stderr
    data = json.loads((workdir / "results.json").read_text())
    assert [r["status"] for r in data["results"]] == ["compiled", "compiled", "compiled", "failed"]
    assert {r["target"] for r in data["results"]} == {"cuda:90"}  # --target replaced the file's cuda:80
    assert data["results"][3]["label"] == "broken" and "missing_name" in data["results"][3]["error"]
    assert all(len(r["cache_key"]) == 52 for r in data["results"][:3])


def test_success_then_already_cached_and_bundle(workdir: Path) -> None:
    out = _run(workdir, "good.toml", "--workers", "2", "--cache-dir", "cache", "-v", "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    assert _table(out.stdout)["compiled"] == "3"
    assert out.stderr == ""  # -q: no progress
    # -v: one line per kernel, with the file's target
    assert re.search(r"  row_max_fp16\s+cuda:80\s+compiled\s+\d+\.\d{3} s  [A-Z2-7]{16}", out.stdout)

    args = ["good.toml", "--workers", "2", "--cache-dir", "cache", "--pool", "process"]
    try:
        from pyruntime.bundle.collect import collect_dir  # noqa: F401
        args += ["--bundle", "out/kernels.bundle"]
        bundling = True
    except ImportError:
        bundling = False
    again = _run(workdir, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = _table(again.stdout)
    assert rows["compiled"] == "0" and rows["already cached"] == "3" and rows["failed"] == "0"
    if bundling:
        from pyruntime.bundle.model import TritonBundle

        assert re.search(r"bundle: out/kernels.bundle \(3 kernels, [\d.]+ KiB\)", again.stdout)
        bundle = TritonBundle.load(workdir / "out" / "kernels.bundle")
        # the 3 kernels, and the host code (Triton's cuda_utils) built for them
        assert sum(k.kind == "kernel" for k in bundle.kernel_artifacts) == 3 and bundle.targets == ["cuda:80"]
        assert all(k.kind in ("kernel", "host") for k in bundle.kernel_artifacts)


def test_user_errors_exit_2_without_traceback(workdir: Path) -> None:
    (workdir / "bad.toml").write_text('[[kernels]]\nfn = "m:k"\nsignature = { x = "*fp33" }\n')
    out = _run(workdir, "bad.toml", "--cache-dir", "cache")
    assert out.returncode == 2
    assert out.stderr.startswith("pyruntime: error: bad.toml: kernels[0] (line 1) 'm:k': signature.x: unknown type")
    assert "Traceback" not in out.stderr and out.stdout == ""

    out = _run(workdir, "good.toml", "--target", "cuda:sm90x")
    assert out.returncode == 2 and "--target: unknown target 'cuda:sm90x'" in out.stderr

    out = _run(workdir, "missing.json")
    assert out.returncode == 2 and "missing.json: no such file" in out.stderr

    out = _run(workdir, "good.toml", "--workers", "0")
    assert out.returncode == 2 and "--workers must be at least 1" in out.stderr


def test_local_target_without_gpu(workdir: Path) -> None:
    from triton.runtime.driver import driver

    try:
        driver.active.get_current_target()
        pytest.skip("this machine has a GPU")
    except Exception:
        pass
    out = _run(workdir, "good.toml", "--target", "local", "--cache-dir", "cache")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "target 'local' means the GPU of this machine, but Triton found none" in out.stderr
    assert "Traceback" not in out.stderr


def test_dry_run_lists_without_building(workdir: Path) -> None:
    out = _run(workdir, "good.toml", "--dry-run", "--target", "cuda:90", "--target", "hip:gfx942",
               "--cache-dir", "cache", "--workers", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 7
    assert lines[0].startswith("scale_add[BLOCK=128,num_warps=4,fp32]  cuda:90  ")
    assert lines[-1] == f"precompile: 6 kernels would be built into {workdir / 'cache'} (3 workers)"
    assert not (workdir / "cache").exists()
