"""Frozen mode (pyruntime.freeze) on Triton's real JIT path.

There is no GPU here: a stand-in driver (tests/standin.py) lets
``kernel.warmup`` run the JIT's real specialisation, hooks, cache lookup and
compile. Kernels are precompiled with pyruntime's real precompile (in this
process, no pool) so their ``pyruntime.spec.json`` is written as in
production; each scenario runs in its own interpreter.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import sys
from pathlib import Path

import pytest

from pyruntime.errors import JITCompileError, PyRuntimeError
from pyruntime.jit_guard import Explanation, format_miss, jit_mode
from pyruntime.specialize import Specialisation, differences

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import standin  # noqa: E402

SETUP = '''
import triton
import pyruntime
from pyruntime.errors import JITCompileError
from pyruntime.kernels import KernelSpec
from pyruntime.precompile import precompile

cache = os.environ["TRITON_CACHE_DIR"]
SIG = {sig!r}
DIV = ["x_ptr", "y_ptr", "out_ptr", "n"]
built = precompile([KernelSpec(fn="tkern:add_kernel", signature=SIG, constexprs={{"BLOCK": 1024}},
                               divisibility=DIV, options={{"num_warps": 4}})],
                   pool=standin.InlineExecutor(), cache_dir=cache)
assert built[0].ok, built[0].error
standin.install()
import tkern
T = standin.tensor()
out = {{}}
'''.format(sig=standin.ADD_SIG)


def _run(tmp_path: Path, code: str, env: dict[str, str] | None = None) -> dict:
    standin.write_kernels(tmp_path)
    full = {"TRITON_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    return standin.run(SETUP + textwrap.dedent(code), tmp_path, env=full)


@pytest.mark.timeout(300)
def test_error_mode_loads_bundled_kernels_and_refuses_compiles(tmp_path: Path) -> None:
    report = _run(tmp_path, '''
    before = standin.cache_dirs(cache)
    with pyruntime.freeze("error") as fz:
        tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))  # in the cache: a load
        out["bundled_ok"] = True
        for label, args, kw in [("block", (T, T, T, 4097), {"BLOCK": 512}),
                                ("one", (T, T, T, 1), {"BLOCK": 1024}),
                                ("dtype", (standin.tensor("fp16"), T, T, 4096), {"BLOCK": 1024}),
                                ("warps", (T, T, T, 4096), {"BLOCK": 1024, "num_warps": 8}),
                                ("unaligned", (T, standin.tensor(aligned=False), T, 4096), {"BLOCK": 1024})]:
            try:
                tkern.add_kernel.warmup(*args, grid=(1,), **kw)
                out[label] = None
            except JITCompileError as e:
                out[label] = {"text": str(e), "fields": [d.field for d in e.differences], "kernel": e.kernel,
                              "runtime": isinstance(e, RuntimeError)}
        out["misses"] = len(fz.misses)
        out["active"] = fz.active
    out["new"] = sorted(standin.cache_dirs(cache) - before)
    out["hook_after"] = triton.knobs.runtime.jit_cache_hook is None
    out["listener_after"] = triton.knobs.compilation.listener is None
    print(json.dumps(out))
    ''')
    assert report["bundled_ok"] and report["active"]
    assert report["new"] == [], "a refused compile must not leave anything in the cache"
    assert report["misses"] == 5
    block = report["block"]
    first = block["text"].splitlines()[0]
    assert first.startswith("kernel add_kernel[BLOCK=512, num_warps=4, num_stages=3] would compile (frozen, "
                            "PYRUNTIME_JIT=error): nearest bundled add_kernel differs in (launch vs bundled): ")
    assert "n divisibility none vs 16" in first and "BLOCK 512 vs 1024" in first
    assert block["fields"] == ["n divisibility", "BLOCK"] and block["kernel"] == "add_kernel" and block["runtime"]
    assert "list n in divisibility" not in block["text"] and "add a variant without n in divisibility" in block["text"]
    assert "constexprs = { BLOCK = 512 }" in block["text"]
    one = report["one"]
    assert one["fields"] == ["n"]
    assert "n 1 vs i32 D" in one["text"].splitlines()[0]
    assert "the JIT compiles an int equal to 1 as the constexpr 1" in one["text"]
    assert report["dtype"]["fields"] == ["x_ptr dtype"] and "x_ptr dtype *fp16 vs *fp32" in report["dtype"]["text"]
    assert report["warps"]["fields"] == ["num_warps"] and "num_warps 8 vs 4" in report["warps"]["text"]
    assert report["unaligned"]["fields"] == ["y_ptr divisibility"]
    assert "not 16-byte aligned" in report["unaligned"]["text"]
    assert report["hook_after"] and report["listener_after"], "leaving the block puts Triton's hooks back"


@pytest.mark.timeout(300)
def test_warn_and_allow_modes_compile_and_say_so(tmp_path: Path) -> None:
    report = _run(tmp_path, '''
    before = standin.cache_dirs(cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with pyruntime.freeze("warn") as fz:
            tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
            tkern.add_kernel.warmup(T, T, T, 4097, BLOCK=512, grid=(1,))
            tkern.add_kernel.warmup(T, T, T, 4097, BLOCK=256, grid=(1,))
    out["warnings"] = [(w.category.__name__, str(w.message).splitlines()[0], os.path.basename(w.filename))
                       for w in caught if "frozen" in str(w.message)]
    out["misses"] = len(fz.misses)
    mid = standin.cache_dirs(cache)
    out["new_warn"] = len(mid - before)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with pyruntime.freeze("allow") as fa:
            out["allow_hooked"] = triton.knobs.runtime.jit_cache_hook is not None
            tkern.add_kernel.warmup(T, T, T, 4097, BLOCK=128, grid=(1,))
    out["allow_warnings"] = [str(w.message) for w in caught if "frozen" in str(w.message)]
    out["new_allow"] = len(standin.cache_dirs(cache) - mid)
    print(json.dumps(out))
    ''')
    assert report["misses"] == 2 and report["new_warn"] == 2
    # every miss is shown (not once per source line), pointed at the launch line, not at Triton
    assert [w[0] for w in report["warnings"]] == ["JITCompileWarning", "JITCompileWarning"]
    assert "BLOCK 512 vs 1024" in report["warnings"][0][1] and "BLOCK 256 vs 1024" in report["warnings"][1][1]
    assert "PYRUNTIME_JIT=warn" in report["warnings"][0][1]
    assert report["warnings"][0][2] == "<string>"
    # the compile the guard announced is not reported a second time by the compile listener
    assert not report["allow_hooked"] and report["allow_warnings"] == [] and report["new_allow"] == 1


@pytest.mark.timeout(300)
def test_env_var_chained_hooks_and_direct_compiles(tmp_path: Path) -> None:
    report = _run(tmp_path, '''
    calls = []
    def user_hook(**kw):
        calls.append(kw["fn"].name)
        return skip[0]
    skip = [False]
    triton.knobs.runtime.jit_cache_hook = user_hook
    os.environ["PYRUNTIME_JIT"] = "warn"
    fz = pyruntime.freeze("error")
    out["env_mode"] = fz.mode
    fz.release()
    os.environ["PYRUNTIME_JIT"] = "sometimes"
    try:
        pyruntime.freeze()
    except ValueError as e:
        out["bad_env"] = str(e)
    del os.environ["PYRUNTIME_JIT"]
    with pyruntime.freeze() as fz:
        out["default_mode"] = fz.mode
        tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
        skip[0] = True  # the hook before ours skips this compile: Triton launches nothing, we refuse nothing
        out["skipped"] = tkern.add_kernel.warmup(T, T, T, 4097, BLOCK=64, grid=(1,)) is None
        skip[0] = False
        # a compile that does not go through the JIT's hook is reported by the compile listener, afterwards
        from pyruntime.specialize import compile_inputs
        spec = KernelSpec(fn="tkern:add_kernel", signature=SIG, constexprs={"BLOCK": 32})
        try:
            triton.compile(*compile_inputs(spec)[:2])
            out["direct"] = None
        except JITCompileError as e:
            out["direct"] = str(e)
    out["calls"] = calls
    out["hook_after"] = triton.knobs.runtime.jit_cache_hook is user_hook
    print(json.dumps(out))
    ''')
    assert report["env_mode"] == "warn" and report["default_mode"] == "error"
    assert report["bad_env"] == "environment variable PYRUNTIME_JIT='sometimes' is not one of error, warn, allow"
    assert report["skipped"]
    assert report["direct"].startswith("kernel add_kernel was compiled while frozen (PYRUNTIME_JIT=error), by a path")
    assert report["calls"] == ["add_kernel", "add_kernel"]  # the user's hook still runs, first
    assert report["hook_after"]


@pytest.mark.timeout(300)
def test_restored_bundle_is_a_load_and_bundles_explain_misses(tmp_path: Path) -> None:
    run_cache = tmp_path / "run-cache"
    report = _run(tmp_path, '''
    import shutil
    from pyruntime import collect_dir, TritonBundle
    bundle = collect_dir(cache, [r.cache_key for r in built])
    path = os.path.join(os.path.dirname(cache), "k.prtb")
    bundle.save(path)
    run_cache = {run_cache!r}
    os.makedirs(run_cache)
    triton.knobs.cache.dir = run_cache
    # not restored yet: the bundle holds this very kernel
    with pyruntime.freeze("error", bundles=[path]):
        try:
            tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
        except JITCompileError as e:
            out["unrestored"] = str(e).splitlines()[0]
    TritonBundle.load(path).restore(cache_dir=run_cache)
    before = {{d: sorted(os.listdir(os.path.join(run_cache, d))) for d in os.listdir(run_cache)}}
    out["spec_file_restored"] = any("pyruntime.spec.json" in f for f in before.values())
    with pyruntime.freeze("error", bundles=[path]):
        tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
        out["restored_ok"] = True
        try:
            tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=2048, grid=(1,))
        except JITCompileError as e:
            out["miss"] = str(e)
    after = {{d: sorted(os.listdir(os.path.join(run_cache, d))) for d in os.listdir(run_cache)}}
    out["unchanged"] = before == after
    # a bundle from another Triton and Python: its kernel dir under another key, as such a bundle restores
    (key,) = before
    fake = os.path.join(run_cache, "B" * 52)
    shutil.copytree(os.path.join(run_cache, key), fake)
    shutil.rmtree(os.path.join(run_cache, key))
    rec = json.load(open(os.path.join(fake, "pyruntime.spec.json")))
    rec.update(triton_version="3.6.0", triton_abi="cpython-312-x86_64-linux-gnu", cache_key="B" * 52)
    json.dump(rec, open(os.path.join(fake, "pyruntime.spec.json"), "w"))
    import importlib
    importlib.reload(tkern)  # new JIT objects: their in-memory caches do not hold the kernel
    with pyruntime.freeze("error"):
        try:
            tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
        except JITCompileError as e:
            out["other_triton"] = str(e)
    print(json.dumps(out))
    '''.format(run_cache=str(run_cache)))
    assert "holds this very kernel" in report["unrestored"] and "restore the bundle" in report["unrestored"]
    assert report["spec_file_restored"], "bundles carry pyruntime.spec.json like any kernel file"
    assert report["restored_ok"] and report["unchanged"]
    assert "BLOCK 2048 vs 1024" in report["miss"].splitlines()[0]
    first = report["other_triton"].splitlines()[0]
    assert "Triton " in first and "vs 3.6.0" in first
    assert "Python ABI" in first and "vs cpython-312-x86_64-linux-gnu" in first
    assert "build the bundle under the same CPython minor" in report["other_triton"]


# ------------------------------------------------------------ no triton needed


def _rec(**kw) -> Specialisation:
    base = dict(name="k", function="m:k", fn_hash="a" * 64, signature={"x_ptr": "*fp32", "n": "i32", "B": "constexpr"},
                constexprs={"B": 64}, divisibility=["x_ptr", "n"], options={"num_warps": 4, "num_stages": 3},
                target="cuda:90", triton_version="3.9.0", triton_build="b" * 16,
                triton_abi="cpython-311-x86_64-linux-gnu", cache_key="K")
    base.update(kw)
    return Specialisation.from_dict(base)


@pytest.mark.parametrize("launch, short", [
    (dict(target="cuda:100"), "target cuda:100 vs cuda:90"),
    (dict(triton_version="3.6.0"), "Triton 3.6.0 vs 3.9.0"),
    (dict(triton_build="c" * 16), f"Triton build {'c' * 16} vs {'b' * 16}"),
    (dict(triton_abi="cpython-312-x86_64-linux-gnu"),
     "Python ABI cpython-312-x86_64-linux-gnu vs cpython-311-x86_64-linux-gnu"),
    (dict(fn_hash="f" * 64), "kernel code ffffffffffff vs aaaaaaaaaaaa"),
    (dict(constexprs={"B": 128}), "B 128 vs 64"),
    (dict(divisibility=["x_ptr"]), "n divisibility none vs 16"),
    (dict(signature={"x_ptr": "*fp16", "n": "i32", "B": "constexpr"}), "x_ptr dtype *fp16 vs *fp32"),
    (dict(signature={"x_ptr": "constexpr", "n": "i32", "B": "constexpr"}, constexprs={"x_ptr": None, "B": 64}),
     "x_ptr None vs *fp32 D"),
    (dict(options={"num_warps": 8, "num_stages": 3}), "num_warps 8 vs 4"),
    (dict(env={"TRITON_X": "1"}), "env TRITON_X 1 vs None"),
    (dict(unspecialised=["n"], divisibility=["x_ptr"]), "n divisibility none vs 16"),
])
def test_each_field_is_named(launch, short) -> None:
    diffs = differences(_rec(**launch), _rec())
    assert diffs and diffs[0].short() == short
    assert all(d.hint for d in diffs)


def test_none_and_ones_get_their_rule_in_the_hint() -> None:
    launch = _rec(signature={"x_ptr": "constexpr", "n": "constexpr", "B": "constexpr"},
                  constexprs={"x_ptr": None, "n": 1, "B": 64}, divisibility=[])
    hints = {d.field: d.hint for d in differences(launch, _rec())}
    assert 'none = ["x_ptr"]' in hints["x_ptr"] and "compiles as the constexpr None" in hints["x_ptr"]
    assert "constexprs = { n = 1 }" in hints["n"] and "int equal to 1" in hints["n"]


def test_the_message_has_one_line_first() -> None:
    launch = _rec(constexprs={"B": 128})
    ex = Explanation(launch, nearest=_rec(), where="Triton cache /c", differences=differences(launch, _rec()),
                     candidates=1)
    text = format_miss(ex, "error")
    first, *rest = text.splitlines()
    assert first == ("kernel k[B=128, num_warps=4, num_stages=3] would compile (frozen, PYRUNTIME_JIT=error): "
                     "nearest bundled k differs in (launch vs bundled): B 128 vs 64")
    assert rest[0].startswith("  launch:  m:k for cuda:90, Triton 3.9.0")
    assert any(line.startswith("    B 128 vs 64: add a variant with constexprs = { B = 128 }") for line in rest)
    none = format_miss(Explanation(launch, searched=["Triton cache /c"]), "warn")
    assert none.splitlines()[0].endswith("no bundled kernel of k (Triton cache /c)")


def test_modes_and_the_error_class(monkeypatch) -> None:
    monkeypatch.delenv("PYRUNTIME_JIT", raising=False)
    assert jit_mode() == "error" and jit_mode("warn") == "warn"
    with pytest.raises(ValueError, match="freeze mode must be one of error, warn, allow, not 'strict'"):
        jit_mode("strict")
    monkeypatch.setenv("PYRUNTIME_JIT", "Allow")
    assert jit_mode("error") == "allow"
    assert issubclass(JITCompileError, PyRuntimeError) and issubclass(JITCompileError, RuntimeError)


def test_import_pyruntime_stays_light() -> None:
    code = ("import sys, pyruntime; f = pyruntime.freeze; r = pyruntime.record_launches; "
            "e = pyruntime.JITCompileError; import pyruntime.jit_guard as m; "
            "print('triton' in sys.modules, 'torch' in sys.modules, callable(pyruntime.freeze))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYRUNTIME_RECORD"})
    assert out.stdout.split() == ["False", "False", "True"], out.stderr
