"""compile_tasks: loading generated source, the ptxas path, the worker build."""

from __future__ import annotations

import json
import linecache
import logging
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

from pyruntime import compile_tasks
from pyruntime.compile_tasks import reload_python_module, worker_compile_triton

# ------------------------------------------------------------ reload_python_module


def test_reload_python_module_loads_a_fresh_module(tmp_path: Path) -> None:
    src = tmp_path / "gen.py"
    src.write_text("VALUE = 41 + 1\ndef f(x: int) -> int:\n    return x\n")
    mod = reload_python_module("k_one", src)
    try:
        assert mod.__name__ == "pyruntime.compile_tasks.k_one"
        assert mod.__file__ == str(src)
        assert mod.key == "k_one"
        assert mod.VALUE == 42
        assert sys.modules["pyruntime.compile_tasks.k_one"] is mod
        # compiled with dont_inherit: this package's `from __future__ import
        # annotations` must not turn the generated annotations into strings
        assert mod.f.__annotations__ == {"x": int, "return": int}
        # a second load is a new module object that replaces the first
        src.write_text("VALUE = 7\n")
        again = reload_python_module("k_one", src)
        assert again is not mod and again.VALUE == 7
        assert sys.modules["pyruntime.compile_tasks.k_one"] is again
    finally:
        sys.modules.pop("pyruntime.compile_tasks.k_one", None)


def test_reload_python_module_without_sys_modules(tmp_path: Path) -> None:
    src = tmp_path / "gen.py"
    src.write_text("X = 1\n")
    mod = reload_python_module("k_private", str(src), set_sys_modules=False)
    assert mod.X == 1
    assert "pyruntime.compile_tasks.k_private" not in sys.modules


def _assert_clean_error(exc: BaseException) -> str:
    # raised `from None`: no cause, context suppressed, so the printed
    # traceback is this one error only
    assert exc.__cause__ is None
    assert exc.__suppress_context__ is True
    text = "".join(traceback.format_exception(exc))
    assert "During handling of the above exception" not in text
    assert "The above exception was the direct cause" not in text
    return str(exc)


def test_reload_python_module_syntax_error(tmp_path: Path) -> None:
    src = tmp_path / "bad_syntax.py"
    src.write_text("def f(:\n    pass\n")
    with pytest.raises(RuntimeError) as info:
        reload_python_module("k_syntax", src)
    msg = _assert_clean_error(info.value)
    first, second = msg.split("\n", 1)
    assert first == f"Failed to import {src}"
    assert second.startswith("SyntaxError: ")
    assert "pyruntime.compile_tasks.k_syntax" not in sys.modules


def test_reload_python_module_import_error(tmp_path: Path) -> None:
    src = tmp_path / "bad_import.py"
    src.write_text("import pyruntime_no_such_module_xyz\n")
    with pytest.raises(RuntimeError) as info:
        reload_python_module("k_import", src)
    msg = _assert_clean_error(info.value)
    assert msg == (f"Failed to import {src}\n"
                   "ModuleNotFoundError: No module named 'pyruntime_no_such_module_xyz'")
    assert "pyruntime.compile_tasks.k_import" not in sys.modules


def test_reload_python_module_error_in_body(tmp_path: Path) -> None:
    src = tmp_path / "raises.py"
    src.write_text("raise ValueError('generated code is wrong')\n")
    with pytest.raises(RuntimeError) as info:
        reload_python_module("k_body", src)
    assert _assert_clean_error(info.value) == f"Failed to import {src}\nValueError: generated code is wrong"


def test_reload_python_module_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        reload_python_module("k_missing", tmp_path / "nope.py")


# ------------------------------------------------------------ set_triton_ptxas_path

# Runs in a fresh interpreter: the function is once-per-process and edits
# os.environ, so each case needs its own process.
_PTXAS_SCRIPT = textwrap.dedent("""
    import json, os, sys, warnings
    from pathlib import Path
    from pyruntime import compile_tasks
    compile_tasks.BUNDLED_PTXAS = Path(sys.argv[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_tasks.set_triton_ptxas_path()
        first = os.environ.get("TRITON_PTXAS_PATH")
        if len(sys.argv) > 2:  # make it executable, then ask again
            os.chmod(sys.argv[1], 0o755)
        compile_tasks.set_triton_ptxas_path()
    print(json.dumps({"first": first, "env": os.environ.get("TRITON_PTXAS_PATH"),
                      "warnings": [str(w.message) for w in caught]}))
""")


def _run_ptxas_case(ptxas: Path, env_value: str | None = None, *extra: str) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_PTXAS_PATH", None)
    if env_value is not None:
        env["TRITON_PTXAS_PATH"] = env_value
    out = subprocess.run([sys.executable, "-c", _PTXAS_SCRIPT, str(ptxas), *extra], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _make_ptxas(tmp_path: Path, mode: int) -> Path:
    p = tmp_path / "bin" / "ptxas"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("#!/bin/sh\necho ptxas\n")
    os.chmod(p, mode)
    return p


@pytest.mark.timeout(60)
def test_ptxas_executable_is_used(tmp_path: Path) -> None:
    p = _make_ptxas(tmp_path, 0o755)
    r = _run_ptxas_case(p)
    assert r["env"] == str(p) and r["warnings"] == []


@pytest.mark.timeout(60)
def test_ptxas_existing_setting_is_left_alone(tmp_path: Path) -> None:
    p = _make_ptxas(tmp_path, 0o755)
    assert _run_ptxas_case(p, "/opt/custom/ptxas") == {"first": "/opt/custom/ptxas", "env": "/opt/custom/ptxas",
                                                       "warnings": []}
    # set but empty still counts as set
    assert _run_ptxas_case(p, "")["env"] == ""


@pytest.mark.timeout(60)
def test_ptxas_not_executable_warns(tmp_path: Path) -> None:
    p = _make_ptxas(tmp_path, 0o644)
    r = _run_ptxas_case(p, None, "chmod-then-retry")
    assert r["first"] is None
    # once per process: making it executable afterwards changes nothing and
    # the warning is not repeated
    assert r["env"] is None
    assert r["warnings"] == [f"{p} exists but is not an executable"]


@pytest.mark.timeout(60)
def test_ptxas_directory_warns_and_missing_is_silent(tmp_path: Path) -> None:
    d = tmp_path / "bin" / "ptxas"
    d.mkdir(parents=True)
    r = _run_ptxas_case(d)
    assert r["env"] is None and r["warnings"] == [f"{d} exists but is not an executable"]
    r = _run_ptxas_case(tmp_path / "elsewhere" / "ptxas")
    assert r == {"first": None, "env": None, "warnings": []}


# ------------------------------------------------------------ worker_compile_triton


def _spec(tmp_path: Path, block: int = 128):
    from precompile_kernels import good_specs, write_sources

    from pyruntime.kernels import KernelSpec

    paths = write_sources(tmp_path)
    base = good_specs(paths)[0]
    return KernelSpec(source=base.source, function=base.function, signature=base.signature,
                      constexprs={"BLOCK": block})


@pytest.mark.timeout(120)
def test_worker_compile_triton_builds_applies_env_and_knobs(tmp_path: Path, monkeypatch, caplog) -> None:
    from triton import knobs

    from pyruntime.precompile import TritonBuild

    cache = tmp_path / "cache"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    monkeypatch.delenv("PYRUNTIME_TEST_MARK", raising=False)
    spec = _spec(tmp_path)
    linecache.cache["/tmp/pyruntime-test-linecache-entry"] = (1, None, ["x\n"], "/tmp/x")
    caplog.set_level(logging.DEBUG, logger="pyruntime.compile_tasks")

    build, us = worker_compile_triton(lambda: TritonBuild(spec), {"TRITON_CACHE_DIR": str(cache),
                                                                  "PYRUNTIME_TEST_MARK": "1"}, {})
    assert us > 0
    assert build.compiled is None  # prepare_for_pickle dropped the CompiledKernel
    assert build.name == "scale_add" and build.cached is False
    assert build.path == str(cache / build.cache_key)
    assert any(n.startswith("__grp__") for n in os.listdir(build.path))
    assert os.environ["PYRUNTIME_TEST_MARK"] == "1"  # the environment stays for the worker's life
    assert "/tmp/pyruntime-test-linecache-entry" not in linecache.cache
    assert any("built triton kernel" in r.getMessage() for r in caplog.records)

    # The same kernel again is a cache hit ...
    again, _ = worker_compile_triton(lambda: TritonBuild(spec), {}, {})
    assert again.cached is True and again.cache_key == build.cache_key
    # ... unless a knob patched for this build says to always compile; the
    # knob is back to its old value afterwards.
    before = knobs.compilation.always_compile
    forced, _ = worker_compile_triton(lambda: TritonBuild(spec), {}, {"compilation.always_compile": True})
    assert forced.cached is False and forced.cache_key == build.cache_key
    assert knobs.compilation.always_compile == before
    forced, _ = worker_compile_triton(lambda: TritonBuild(spec), {}, {"compilation": {"always_compile": True}})
    assert forced.cached is False


@pytest.mark.timeout(120)
def test_worker_compile_triton_failure_propagates_and_is_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    from precompile_kernels import broken_spec, write_sources
    from triton import knobs
    from triton.compiler.errors import CompilationError

    from pyruntime.precompile import TritonBuild

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    spec = broken_spec(write_sources(tmp_path))
    caplog.set_level(logging.INFO, logger="pyruntime.compile_tasks")
    before = knobs.compilation.always_compile
    with pytest.raises(CompilationError, match="missing_name"):
        worker_compile_triton(lambda: TritonBuild(spec), {}, {"compilation.always_compile": True})
    assert knobs.compilation.always_compile == before  # restored on failure too
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("failed to build triton kernel broken") and "missing_name" in m for m in msgs)


def test_worker_compile_triton_rejects_unknown_knobs(tmp_path: Path) -> None:
    calls = []
    with pytest.raises(ValueError, match="no knob 'no_such_knob'"):
        worker_compile_triton(lambda: calls.append(1), {}, {"compilation.no_such_knob": 1})
    with pytest.raises(ValueError, match="no section 'nosection'"):
        worker_compile_triton(lambda: calls.append(1), {}, {"nosection.x": 1})
    with pytest.raises(ValueError, match="'section.knob'"):
        worker_compile_triton(lambda: calls.append(1), {}, {"always_compile": True})
    assert calls == []  # nothing was loaded or built


@pytest.mark.timeout(120)
def test_warm_triton_runs_once() -> None:
    code = ("from pyruntime.compile_tasks import warm_triton\n"
            "import os\n"
            "first = warm_triton(); second = warm_triton()\n"
            "assert first > 0 and second == 0.0, (first, second)\n"
            "assert len(os.listdir('/proc/self/task')) == 1  # no thread left: safe to fork\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_compile_tasks_does_not_import_triton() -> None:
    code = "import sys, pyruntime.compile_tasks, pyruntime.kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
    assert compile_tasks.BUNDLED_PTXAS.name == "ptxas"
