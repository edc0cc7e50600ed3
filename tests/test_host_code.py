"""Host code in bundles (pyruntime.host_code): Triton's launcher stubs and
``cuda_utils`` built without a GPU, at the keys Triton computes, found and
loaded by Triton's own code with the C compiler refused, and carried by
bundles as entries of kind "host".

Everything is real: kernels compiled for cuda:90, gcc, the installed Triton
(3.9 here; a helper venv with Triton 3.6 under Python 3.12 in the slow
test). No driver is needed: the modules link against the stub
``libcuda.so.1`` host_code builds, which the checking children load.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from bundle_kernels import SAMPLES, compile_samples

from pyruntime.bundle import collect_dir
from pyruntime.bundle.collect import HOST_MARKER, host_dir_abi
from pyruntime.bundle.model import TritonBundle
from pyruntime.host_code import (
    HostCodeError,
    HostTarget,
    build_host_code,
    launch_signature,
    probe_python,
    resolve_python,
)

triton = pytest.importorskip("triton")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXT = sysconfig.get_config_var("EXT_SUFFIX")
ABI = EXT.lstrip(".")[: -len(".so")]
PY312 = "/root/.pyenv/versions/3.12.1/bin/python"
PY310 = "/root/.pyenv/versions/3.10.13/bin/python"
# A libcuda directory for the key only (Triton 3.8+ hashes it in); the
# checking children give Triton the same through TRITON_LIBCUDA_PATH.
KEY_LIBCUDA = "/opt/gpu-machine/lib"


def _needs_binutils() -> None:
    if not (shutil.which("readelf") and shutil.which("nm")):
        pytest.skip("readelf/nm (binutils) not installed")


def _stub_dir(build_dir: Path) -> str:
    stubs = glob.glob(str(build_dir / "libcuda-stub-*"))
    assert len(stubs) == 1, stubs  # one stub per Triton version's driver API
    return stubs[0]


def _compiler_shims(tmp: Path) -> tuple[dict[str, str], Path]:
    """Environment with gcc/cc/clang shims first on PATH (and as CC) that log and exit 1."""
    d = tmp / "shims"
    d.mkdir(exist_ok=True)
    log = tmp / "compiler.log"
    for name in ("gcc", "cc", "clang"):
        p = d / name
        p.write_text(f'#!/bin/sh\necho "$0 $*" >> "{log}"\nexit 1\n')
        p.chmod(0o755)
    return {"PATH": f"{d}{os.pathsep}{os.environ.get('PATH', '')}", "CC": str(d / "cc")}, log


def _files(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}


CHECK = textwrap.dedent("""
    # Triton's own host-module loading, as on a GPU machine's first launches
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import triton
    from triton.backends.nvidia import driver as nv
    nv.CudaUtils()
    launchers = []
    if hasattr(nv, "make_launcher"):  # 3.6: one stub per launch signature
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import bundle_kernels
        for fn, sig, cx in bundle_kernels.SAMPLES:
            k = triton.compile(ASTSource(fn, sig, cx), target=GPUTarget("cuda", 90, 32))
            launchers.append(type(nv.CudaLauncher(k.src, k.metadata).launch).__name__)
    print(json.dumps({"triton": triton.__version__, "launchers": launchers}))
""")


def _triton_loads(python: str, cache: Path, build_dir: Path, tmp: Path) -> dict:
    """Run Triton's own CudaUtils (and, on 3.6, CudaLauncher per sample) on
    ``cache`` with the compiler refused; assert it compiled and added nothing."""
    env, log = _compiler_shims(tmp)
    env.update(TRITON_CACHE_DIR=str(cache), TRITON_LIBCUDA_PATH=KEY_LIBCUDA,
               LD_LIBRARY_PATH=_stub_dir(build_dir))
    before = _files(cache)
    p = subprocess.run([python, "-c", CHECK, str(TESTS)], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=300, check=False)
    compiler = log.read_text() if log.exists() else ""
    assert compiler == "", f"Triton ran the C compiler:\n{compiler}\n{p.stderr[-2000:]}"
    assert p.returncode == 0, p.stderr[-3000:]
    assert _files(cache) == before
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The samples compiled for cuda:90 by this Triton, with their host code."""
    tmp = tmp_path_factory.mktemp("host")
    cache, build_dir = tmp / "cache", tmp / "build"
    cache.mkdir()
    hashes = compile_samples(str(cache))
    hb = build_host_code(cache, hashes, target=HostTarget(libcuda_dirs=(KEY_LIBCUDA,)), build_dir=build_dir)
    return tmp, cache, build_dir, hashes, hb


# ------------------------------------------------------------------ this Triton


@pytest.mark.timeout(300)
def test_host_modules_at_tritons_keys(built) -> None:
    tmp, cache, build_dir, hashes, hb = built
    assert hb.triton_version == triton.__version__ and hb.triton_abi == ABI
    assert hb.platform == sysconfig.get_platform() and hb.python == sys.executable
    from triton.backends.nvidia import driver as nv

    per_signature = hasattr(nv, "make_launcher")  # Triton 3.6
    names = [m.module for m in hb.modules]
    assert names[0] == "cuda_utils"
    assert names.count("__triton_launcher") == (3 if per_signature else 0)  # row_sum and softmax share one
    for m in hb.modules:
        assert m.built and m.file == f"{m.module}{EXT}"
        assert os.path.isfile(cache / m.key / m.file)
        marker = json.loads((cache / m.key / HOST_MARKER).read_text())
        assert (marker["kind"], marker["triton_version"], marker["triton_abi"]) == ("host", hb.triton_version, ABI)
        assert sorted(os.listdir(cache / m.key)) == sorted([m.file, HOST_MARKER])  # no tmp left
    assert set(hb.keys_for(hashes[0])) <= set(hb.keys)
    # Triton's own loader finds every module where we put it, loads it, compiles nothing
    out = _triton_loads(sys.executable, cache, build_dir, tmp)
    assert out["triton"] == triton.__version__


@pytest.mark.timeout(300)
def test_modules_link_libcuda_and_export_pyinit(built) -> None:
    _needs_binutils()
    _tmp, cache, build_dir, _hashes, hb = built
    for m in hb.modules:
        so = str(cache / m.key / m.file)
        dyn = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True).stdout
        assert "Shared library: [libcuda.so.1]" in dyn
        assert "RPATH" not in dyn and "RUNPATH" not in dyn  # the GPU machine's loader finds its driver
        syms = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True, text=True, check=True).stdout
        assert f" T PyInit_{m.module}\n" in syms
    stub = os.path.join(_stub_dir(build_dir), "libcuda.so.1")
    assert "Library soname: [libcuda.so.1]" in subprocess.run(["readelf", "-d", stub], capture_output=True,
                                                              text=True, check=True).stdout


@pytest.mark.timeout(300)
def test_second_build_keeps_modules(built) -> None:
    _tmp, cache, build_dir, hashes, hb = built
    before = {p: os.stat(cache / p).st_mtime_ns for p in _files(cache)}
    again = build_host_code(cache, hashes, target=HostTarget(libcuda_dirs=(KEY_LIBCUDA,)), build_dir=build_dir)
    assert again.keys == hb.keys and not any(m.built for m in again.modules)
    assert {p: os.stat(cache / p).st_mtime_ns for p in _files(cache)} == before


@pytest.mark.timeout(300)
def test_another_cache_reuses_the_compiled_module(built, tmp_path) -> None:
    _tmp, cache, build_dir, hashes, hb = built
    other = tmp_path / "cache"
    for h in hashes:  # the kernels only
        shutil.copytree(cache / h, other / h)
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec {shutil.which("gcc")} "$@"\n')
    wrapper.chmod(0o755)
    hb2 = build_host_code(other, hashes, target=HostTarget(libcuda_dirs=(KEY_LIBCUDA,), cc=str(wrapper)),
                          build_dir=build_dir)
    assert hb2.keys == hb.keys and all(m.built for m in hb2.modules)
    assert not log.exists() or " -c " not in log.read_text()  # copied from the build directory, not compiled
    for m in hb2.modules:
        assert (other / m.key / m.file).read_bytes() == (cache / m.key / m.file).read_bytes()


@pytest.mark.timeout(300)
def test_bundle_round_trip_and_restore(built, tmp_path) -> None:
    _tmp, cache, build_dir, hashes, hb = built
    bundle = collect_dir(cache, hashes + hb.keys)
    host = {k.kernel_hash: k for k in bundle.kernel_artifacts if k.kind == "host"}
    assert set(host) == set(hb.keys)
    for k in host.values():
        assert (k.triton_abi, k.platform, k.triton_version, k.target) == (ABI, hb.platform, hb.triton_version, None)
        module = next(m for m in hb.modules if m.key == k.kernel_hash)
        assert sorted(a.filename for a in k.artifacts) == sorted([module.file, HOST_MARKER])
    assert all(k.kind == "kernel" for k in bundle.kernel_artifacts if k.kernel_hash in hashes)
    # every host directory is also found without a key list
    assert {k.kernel_hash for k in collect_dir(cache).kernel_artifacts if k.kind == "host"} == set(hb.keys)
    back = TritonBundle.from_bytes(bundle.to_bytes())
    assert [(k.kernel_hash, k.kind, k.triton_abi, k.platform, k.triton_version) for k in back.kernel_artifacts] == \
        [(k.kernel_hash, k.kind, k.triton_abi, k.platform, k.triton_version) for k in bundle.kernel_artifacts]
    fresh = tmp_path / "restored"
    back.restore(cache_dir=str(fresh), on_mismatch="force")
    for m in hb.modules:
        assert (fresh / m.key / m.file).read_bytes() == (cache / m.key / m.file).read_bytes()
    # and Triton, on the restored cache, compiles nothing
    _triton_loads(sys.executable, fresh, build_dir, tmp_path)


@pytest.mark.timeout(120)
def test_launch_signature_from_ttir_and_function(built) -> None:
    _tmp, cache, _build, hashes, _hb = built
    for h, (fn, sig, cx) in zip(hashes, SAMPLES):
        name, got, meta = launch_signature(str(cache / h))
        assert name == fn.__name__ and meta in ([], None)
        assert got == {p: sig[p] for p in fn.arg_names}  # parameter order, constexprs marked


def test_host_dir_recognition() -> None:
    assert host_dir_abi([f"cuda_utils{EXT}", HOST_MARKER]) == ABI
    assert host_dir_abi(["__triton_launcher.cpython-312-x86_64-linux-gnu.so"]) == "cpython-312-x86_64-linux-gnu"
    assert host_dir_abi(["add_kernel.cubin", "add_kernel.json", "__grp__add_kernel.json"]) is None
    assert host_dir_abi([HOST_MARKER]) is None and host_dir_abi([]) is None
    assert host_dir_abi(["cuda_utils.so"]) is None  # no ABI tag
    assert host_dir_abi(["a.cpython-311-x86_64-linux-gnu.so", "b.cpython-312-x86_64-linux-gnu.so"]) is None


def test_triton_built_host_dir_without_marker(tmp_path) -> None:
    """A host directory Triton built itself (on a GPU machine) is bundled as host code too."""
    d = tmp_path / "ABCDEF"
    d.mkdir(parents=True)
    (d / "cuda_utils.cpython-312-x86_64-linux-gnu.so").write_bytes(b"\x7fELF not really")
    (k,) = collect_dir(tmp_path).kernel_artifacts
    assert (k.kind, k.triton_abi, k.platform, k.triton_version) == \
        ("host", "cpython-312-x86_64-linux-gnu", "linux-x86_64", None)


@pytest.mark.timeout(300)
def test_precompile_and_cli_build_and_bundle_host_code(tmp_path) -> None:
    from pyruntime.kernels import KernelSpec
    from pyruntime.precompile import precompile

    specs = [KernelSpec(source=str(TESTS / "bundle_kernels.py"), function=fn.__name__, constexprs=cx,
                        signature={k: v for k, v in sig.items() if v != "constexpr"}, target="cuda:90")
             for fn, sig, cx in SAMPLES[:2]]
    cache = tmp_path / "cache"
    results = precompile(specs, workers=1, cache_dir=cache, host_code=True)
    assert all(r.ok for r in results), [r.error for r in results]
    keys = {k for r in results for k in r.host_keys}
    assert keys and all(r.host_keys and os.path.isdir(cache / r.host_keys[0]) for r in results)
    none = precompile(specs, workers=1, cache_dir=tmp_path / "c2", host_code=False)
    assert all(r.host_keys == () for r in none) and not any((tmp_path / "c2" / k).exists() for k in keys)

    toml = tmp_path / "k.toml"
    toml.write_text('target = "cuda:90"\n[[kernels]]\nsource = "%s"\nfunction = "add_kernel"\n'
                    'signature = { x_ptr = "*fp32", y_ptr = "*fp32", out_ptr = "*fp32", n = "i32" }\n'
                    'constexprs = { BLOCK = 1024 }\n' % (TESTS / "bundle_kernels.py"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    out = subprocess.run([sys.executable, "-m", "pyruntime", "precompile", str(toml), "--cache-dir",
                          str(tmp_path / "c3"), "--bundle", str(tmp_path / "b.prtb"), "-q", "--workers", "1"],
                         env=env, capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "host code: " in out.stdout and f"for {ABI}" in out.stdout, out.stdout
    kinds = sorted(k.kind for k in TritonBundle.load(tmp_path / "b.prtb").kernel_artifacts)
    assert kinds[0] == "host" and kinds.count("kernel") == 1
    out = subprocess.run([sys.executable, "-m", "pyruntime", "precompile", str(toml), "--cache-dir",
                          str(tmp_path / "c4"), "--no-host-code", "--python", "3.12", "-q"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "--no-host-code with options for the host code" in out.stderr


@pytest.mark.timeout(120)
def test_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(HostCodeError, match="no such interpreter|not an executable"):
        resolve_python(HostTarget(python=str(tmp_path / "python9")))
    with pytest.raises(HostCodeError, match="either as an interpreter or as an ABI tag"):
        resolve_python(HostTarget(python=sys.executable, python_abi=ABI))
    with pytest.raises(HostCodeError, match="no cpython-399-x86_64-linux-gnu interpreter found"):
        resolve_python(HostTarget(python_abi="cpython-399-x86_64-linux-gnu"))
    with pytest.raises(HostCodeError, match="does not exist"):
        build_host_code(tmp_path / "nope")
    if os.access(PY310, os.X_OK):  # a real interpreter without Triton
        info = probe_python(PY310)
        assert info["triton_version"] is None and info["abi"] == "cpython-310-x86_64-linux-gnu"
        with pytest.raises(HostCodeError, match="has no Triton") as e:
            resolve_python(HostTarget(python="3.10"))
        assert "\n" not in str(e.value)
    assert resolve_python(HostTarget(python_abi=ABI)) == sys.executable
    # no CUDA kernels: nothing to build, no interpreter started for it
    (tmp_path / "empty").mkdir()
    assert build_host_code(tmp_path / "empty").modules == ()


# ------------------------------------------------------------------ the GPU machine's: Python 3.12, Triton 3.6

VENV_ROOT = os.environ.get("PYRUNTIME_TEST_HOST_VENVS", "/tmp/pyruntime-test-host-venvs")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_python312_triton36_stubs(tmp_path) -> None:
    """What the GPU machine needs, built from this Python 3.11 / Triton 3.9
    machine: a helper venv (pyenv's 3.12 + triton==3.6.0), the samples
    compiled by that Triton, host code for it, checked by its own loader."""
    from pyruntime.host_code import helper_venv

    if not os.access(PY312, os.X_OK):
        pytest.skip(f"{PY312} not installed")
    try:
        python = helper_venv(PY312, "3.6.0", root=VENV_ROOT)
    except HostCodeError as e:
        pytest.skip(f"no Triton 3.6.0 venv (package index unreachable?): {e}")
    assert helper_venv(PY312, "3.6.0", root=VENV_ROOT) == python  # made once
    cache, build_dir = tmp_path / "cache", tmp_path / "build"
    cache.mkdir()
    compile_them = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bundle_kernels; "
                    "print(json.dumps(bundle_kernels.compile_samples(sys.argv[2])))")
    p = subprocess.run([python, "-c", compile_them, str(TESTS), str(cache)], capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    hashes = json.loads(p.stdout.strip().splitlines()[-1])
    hb = build_host_code(cache, hashes, target=HostTarget(python=python), build_dir=build_dir)
    assert (hb.triton_version, hb.triton_abi, hb.platform) == ("3.6.0", "cpython-312-x86_64-linux-gnu",
                                                               "linux-x86_64")
    assert [m.module for m in hb.modules].count("__triton_launcher") == 3 and not hb.skipped and not hb.warnings
    assert all(m.file.endswith(".cpython-312-x86_64-linux-gnu.so") for m in hb.modules)
    out = _triton_loads(python, cache, build_dir, tmp_path)
    assert out["triton"] == "3.6.0" and len(out["launchers"]) == len(SAMPLES)
    bundle = TritonBundle.from_bytes(collect_dir(cache, hashes + hb.keys).to_bytes())
    host = [k for k in bundle.kernel_artifacts if k.kind == "host"]
    assert len(host) == 4 and {(k.triton_abi, k.platform, k.triton_version) for k in host} == \
        {("cpython-312-x86_64-linux-gnu", "linux-x86_64", "3.6.0")}
