"""KernelSpec, targets and kernel-list files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from pyruntime.kernels import (
    KernelSpec,
    KernelSpecError,
    Target,
    TargetError,
    canonical_type,
    load_kernel_list,
    parse_kernel_list,
    parse_target,
    resolve_target,
)
from pyruntime.specialize import compile_inputs

SIG = {"x_ptr": "*fp32", "n": "i32"}

# ------------------------------------------------------------ targets


@pytest.mark.parametrize("text, expected, canon", [
    ("cuda:90", Target("cuda", 90, 32), "cuda:90"),
    ("cuda:80", Target("cuda", 80, 32), "cuda:80"),
    ("CUDA:100", Target("cuda", 100, 32), "cuda:100"),
    ("cuda:sm_90", Target("cuda", 90, 32), "cuda:90"),
    ("hip:gfx942", Target("hip", "gfx942", 64), "hip:gfx942"),
    ("hip:gfx1100", Target("hip", "gfx1100", 32), "hip:gfx1100"),
    ("hip:gfx1100:64", Target("hip", "gfx1100", 64), "hip:gfx1100:64"),
    ("local", Target("local"), "local"),
])
def test_parse_target(text, expected, canon) -> None:
    t = parse_target(text)
    assert t == expected
    assert str(t) == canon
    assert parse_target(str(t)) == t


@pytest.mark.parametrize("bad", ["cuda", "cuda:", "cuda:abc", "cuda:9", "rocm:gfx942", "hip:942", "", "sm_90"])
def test_parse_target_rejects(bad) -> None:
    with pytest.raises(TargetError, match=r"unknown target .*expected cuda:<sm>"):
        parse_target(bad)


def test_gpu_target_for_named_targets() -> None:
    from triton.backends.compiler import GPUTarget

    assert parse_target("cuda:90").gpu_target() == GPUTarget("cuda", 90, 32)
    assert parse_target("hip:gfx942").gpu_target() == GPUTarget("hip", "gfx942", 64)


def test_resolve_local() -> None:
    from triton.runtime.driver import driver

    try:
        driver.active.get_current_target()
        has_gpu = True
    except Exception:
        has_gpu = False
    if has_gpu:  # pragma: no cover - GPU machines
        assert resolve_target("local").backend in ("cuda", "hip")
    else:
        with pytest.raises(TargetError, match="target 'local' means the GPU of this machine, but Triton found none"):
            resolve_target("local")
    assert resolve_target("cuda:90") == Target("cuda", 90, 32)


# ------------------------------------------------------------ types


@pytest.mark.parametrize("ty, canon", [
    ("*fp32", "*fp32"), ("*float32", "*fp32"), ("*kfp16", "*kfp16"), ("*bfloat16", "*bf16"),
    ("int64", "i64"), ("i1", "u1"), ("bool", "u1"), ("fp8e4nv", "fp8e4nv"), ("constexpr", "constexpr"),
    ("*float8_e5m2", "*fp8e5"), (" i32 ", "i32"),
])
def test_canonical_type(ty, canon) -> None:
    assert canonical_type(ty) == canon


def test_canonical_type_rejects_with_hint() -> None:
    with pytest.raises(ValueError, match=r"unknown type '\*fp33' \(did you mean '\*fp32'\?\)"):
        canonical_type("*fp33")
    with pytest.raises(ValueError, match="unknown type 'tensor'"):
        canonical_type("tensor")


# ------------------------------------------------------------ KernelSpec


def test_spec_normalises_and_is_plain_data() -> None:
    s = KernelSpec(fn="pkg.mod:kern", signature={"x_ptr": "*float32", "n": "int32"}, constexprs={"BLOCK": 64},
                   options={"num_warps": 4}, target="CUDA:sm_90", divisibility=["x_ptr"])
    assert s.signature == {"x_ptr": "*fp32", "n": "i32"}
    assert s.target == "cuda:90"
    assert s.divisibility == ("x_ptr",)
    assert s.function_name == "kern"
    assert s.label == "kern[BLOCK=64,num_warps=4,fp32]"
    assert pickle.loads(pickle.dumps(s)) == s
    assert KernelSpec(**s.to_dict()) == s
    assert KernelSpec(**json.loads(json.dumps(s.to_dict()))) == s
    assert hash(s) == hash(KernelSpec(**s.to_dict()))
    assert s.with_target("hip:gfx942").target == "hip:gfx942"
    named = KernelSpec(fn="pkg.mod:kern", signature=SIG, name="my kernel")
    assert named.label == "my kernel"
    # the label is not part of what gets built
    assert named.key() == KernelSpec(fn="pkg.mod:kern", signature=SIG).key()
    assert {s, KernelSpec(**s.to_dict())} == {s}


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of 'fn'"),
    ({"fn": "a:b", "source": "x.py", "function": "b"}, "exactly one of 'fn'"),
    ({"fn": "no_colon"}, "fn: 'no_colon' is not of the form"),
    ({"fn": "a:b", "function": "c"}, "function: only used with 'source'"),
    ({"source": "x.py"}, "function: None must name"),
    ({"source": "x.py", "function": "1bad"}, "function: '1bad' must name"),
    ({"fn": "a:b", "signature": {"x": "*fp33"}}, r"signature.x: unknown type '\*fp33'"),
    ({"fn": "a:b", "signature": ["x"]}, "signature: must be a table"),
    ({"fn": "a:b", "signature": {"x": "i32"}, "constexprs": {"x": 1}}, "constexprs.x: argument 'x' is typed 'i32'"),
    ({"fn": "a:b", "constexprs": {"B": [1, 2]}}, r"constexprs.B: value \[1, 2\] must be"),
    ({"fn": "a:b", "options": {"num_warps": 0}}, "options.num_warps: must be a positive integer"),
    ({"fn": "a:b", "options": {"num_stages": "3"}}, "options.num_stages: must be a positive integer"),
    ({"fn": "a:b", "options": {"bad key": 1}}, "options: 'bad key' is not a valid"),
    ({"fn": "a:b", "target": "cuda:abc"}, "target: unknown target 'cuda:abc'"),
    ({"fn": "a:b", "constexprs": {"B": 1}, "divisibility": ["B"]}, "divisibility: 'B' is a constexpr"),
    ({"fn": "a:b", "divisibility": "x_ptr"}, "divisibility: must be a list"),
    ({"fn": "a:b", "name": ""}, "name: must be a non-empty string"),
])
def test_spec_rejects(kwargs, match) -> None:
    with pytest.raises(KernelSpecError, match=match):
        KernelSpec(**kwargs)


# ------------------------------------------------------------ loading and compile inputs


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    from precompile_kernels import write_sources

    return write_sources(tmp_path)


def test_load_function_by_module_and_by_source(sources) -> None:
    from triton.runtime.jit import JITFunction

    fn = KernelSpec(fn="pyruntime.bench.kernels:softmax_kernel", signature=SIG).load_function()
    assert isinstance(fn, JITFunction) and fn.__name__ == "softmax_kernel"
    s = KernelSpec(source=str(sources["good"]), function="scale_add")
    fn = s.load_function()
    assert isinstance(fn, JITFunction) and fn.__name__ == "scale_add"
    assert s.load_function() is fn  # one load per file content
    # an @triton.autotune wrapper is unwrapped to the jitted function
    tuned = KernelSpec(source=str(sources["good"]), function="tuned_copy").load_function()
    assert isinstance(tuned, JITFunction) and tuned.__name__ == "tuned_copy"


def test_load_function_errors(sources, tmp_path: Path) -> None:
    with pytest.raises(KernelSpecError, match="defines no 'nope'"):
        KernelSpec(source=str(sources["good"]), function="nope").load_function()
    with pytest.raises(KernelSpecError, match="is a int, not a @triton.jit function"):
        KernelSpec(source=str(sources["good"]), function="not_a_kernel").load_function()
    with pytest.raises(KernelSpecError, match="source: cannot read"):
        KernelSpec(source=str(tmp_path / "missing.py"), function="k").load_function()
    with pytest.raises(RuntimeError, match="Failed to import pyruntime_missing_mod\nModuleNotFoundError"):
        KernelSpec(fn="pyruntime_missing_mod:k").load_function()
    with pytest.raises(KernelSpecError, match="has no attribute 'nope'"):
        KernelSpec(fn="pyruntime.bench.kernels:nope").load_function()


def test_compile_inputs_follow_the_jit_conventions(sources) -> None:
    from triton.backends.compiler import GPUTarget

    s = KernelSpec(source=str(sources["good"]), function="scale_add",
                   signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "alpha": "fp32", "n": "i32"},
                   constexprs={"BLOCK": 128}, options={"num_warps": 2}, divisibility=["x_ptr", "n"])
    src, target, options = compile_inputs(s)
    assert target == GPUTarget("cuda", 90, 32)
    assert options == {"num_warps": 2}
    # parameter order, constexprs typed 'constexpr', the default of RELU filled in
    assert list(src.signature.items()) == [("x_ptr", "*fp32"), ("y_ptr", "*fp32"), ("out_ptr", "*fp32"),
                                           ("alpha", "fp32"), ("n", "i32"), ("BLOCK", "constexpr"),
                                           ("RELU", "constexpr")]
    assert src.constants == {(5,): 128, (6,): False}
    # the JIT's attribute entries: pointers and ints (not the float alpha), divisibility
    # where asked, plus empty entries for constexprs where this Triton's JIT adds them
    # (tests/test_jit_keys.py checks the resulting cache keys against the real JIT)
    from pyruntime.specialize import jit_constexpr_attr_rule as _jit_constexpr_attr_rule

    want = {(0,): [["tt.divisibility", 16]], (1,): [], (2,): [], (4,): [["tt.divisibility", 16]]}
    if _jit_constexpr_attr_rule() == "all":
        want.update({(5,): [], (6,): []})
    assert src.attrs == want


@pytest.mark.parametrize("kwargs, match", [
    ({"signature": {"x_ptr": "*fp32"}}, r"signature.y_ptr: no type for argument 'y_ptr' of scale_add"),
    ({"constexprs": {"BLCK": 1}}, r"constexprs.BLCK: scale_add has no argument 'BLCK' \(did you mean 'BLOCK'\?\)"),
    ({"options": {"num_warpz": 4}}, r"options.num_warpz: not a compile option .* \(did you mean 'num_warps'\?\)"),
    ({"constexprs": {}}, r"constexprs.BLOCK: scale_add needs a value for constexpr 'BLOCK'"),
])
def test_compile_inputs_errors(sources, kwargs, match) -> None:
    fields = {"signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "alpha": "fp32", "n": "i32"},
              "constexprs": {"BLOCK": 64}, **kwargs}
    with pytest.raises(KernelSpecError, match=match):
        compile_inputs(KernelSpec(source=str(sources["good"]), function="scale_add", **fields))


@pytest.mark.timeout(60)
def test_divisibility_reaches_the_compiled_kernel(sources, tmp_path: Path, monkeypatch) -> None:
    import triton

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    s = KernelSpec(source=str(sources["good"]), function="row_max",
                   signature={"x_ptr": "*fp16", "out_ptr": "*fp32", "stride": "i32", "n_cols": "i32"},
                   constexprs={"BLOCK": 128}, divisibility=["x_ptr", "stride"])
    compiled = triton.compile(*compile_inputs(s)[:2], options=compile_inputs(s)[2])
    ttir = compiled.asm["ttir"]
    assert "%x_ptr: !tt.ptr<f16> {tt.divisibility = 16 : i32}" in ttir
    assert "%stride: i32 {tt.divisibility = 16 : i32}" in ttir
    assert "%n_cols: i32 {" not in ttir


# ------------------------------------------------------------ kernel-list files

GOOD_TOML = """\
# kernels this launcher ships
version = 1
target = "cuda:90"
python_path = ["src"]

[defaults]
options = { num_warps = 4 }
divisibility = ["x_ptr", "absent_ptr"]

[[kernels]]
name = "softmax_bf16"
fn = "pyruntime.bench.kernels:softmax_kernel"
signature = { out_ptr = "*bf16", in_ptr = "*bf16", in_stride = "i32", out_stride = "i32", n_cols = "i32" }
constexprs = { BLOCK = 1024 }
options = { num_warps = 8 }

[[kernels]]
source = "gen/good_kernels.py"
function = "scale_add"
signature = { x_ptr = "*fp32", y_ptr = "*fp32", out_ptr = "*fp32", alpha = "fp32", n = "i32" }
target = "cuda:80"

[[kernels.variants]]
constexprs = { BLOCK = 128 }

[[kernels.variants]]
constexprs = { BLOCK = 256, RELU = true }
options = { num_stages = 2 }
divisibility = []
target = "hip:gfx942"
"""


def _as_json(toml_text: str) -> str:
    import tomllib

    return json.dumps(tomllib.loads(toml_text), indent=1)


def test_parse_good_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "gen").mkdir()
    f = tmp_path / "kernels.toml"
    f.write_text(GOOD_TOML)
    specs = load_kernel_list(f)
    assert [s.label for s in specs] == [
        "softmax_bf16",
        "scale_add[BLOCK=128,num_warps=4,fp32]",
        "scale_add[BLOCK=256,RELU=True,num_stages=2,num_warps=4,fp32]",
    ]
    soft, v1, v2 = specs
    assert soft.fn == "pyruntime.bench.kernels:softmax_kernel"
    assert soft.options == {"num_warps": 8}  # the kernel's own option wins over [defaults]
    assert soft.divisibility == ()  # softmax has no x_ptr: defaults only apply names a kernel has
    assert soft.target == "cuda:90"
    assert soft.python_path == (str((tmp_path / "src").resolve()),)
    assert v1.source == str((tmp_path / "gen" / "good_kernels.py").resolve())
    assert v1.function == "scale_add" and v1.constexprs == {"BLOCK": 128}
    assert v1.divisibility == ("x_ptr",) and v1.target == "cuda:80"
    assert v2.constexprs == {"BLOCK": 256, "RELU": True}
    assert v2.options == {"num_warps": 4, "num_stages": 2}
    assert v2.divisibility == () and v2.target == "hip:gfx942"

    j = tmp_path / "kernels.json"
    j.write_text(_as_json(GOOD_TOML))
    assert load_kernel_list(j) == specs
    # the command line's target replaces every target in the file
    assert {s.target for s in load_kernel_list(f, target="cuda:100")} == {"cuda:100"}


def test_inline_kernel_array_and_minimal_file(tmp_path: Path) -> None:
    text = ('kernels = [ { fn = "m:k", signature = { x_ptr = "*fp32" } },'
            ' { fn = "m:k2", signature = { y = "i64" } } ]\n')
    specs = parse_kernel_list(text, "toml", origin="inline.toml")
    assert [s.fn for s in specs] == ["m:k", "m:k2"] and specs[0].target == "cuda:90"


@pytest.mark.parametrize("text, fmt, match", [
    ('target = "cuda:90"\n[[kernels]\nfn = "m:k"\n', "toml",
     r"k.toml: invalid TOML: .*\(at line 2, column \d+\)"),
    ('{"kernels": [ {"fn": "m:k",} ]}', "json", r"k.json: invalid JSON: .*\(at line 1, column \d+\)"),
    ('kernel = []\n', "toml", r"k.toml: unknown key 'kernel' \(did you mean 'kernels'\?\)"),
    ('target = "cuda:90"\n', "toml", r"k.toml: no kernels: add one or more \[\[kernels\]\] entries"),
    ('version = 2\n[[kernels]]\nfn = "m:k"\n', "toml", "version: 2 is not supported"),
    ('target = "cuda9"\n[[kernels]]\nfn = "m:k"\n', "toml", "k.toml: target: unknown target 'cuda9'"),
    ('[defaults]\nopts = {}\n[[kernels]]\nfn = "m:k"\n', "toml",
     r"k.toml: defaults: unknown key 'opts' \(did you mean 'options'\?\)"),
    ('[[kernels]]\nfn = "m:k"\n\n[[kernels]]\nfn = "m:k2"\nsignature = { x = "*fp33" }\n', "toml",
     r"k.toml: kernels\[1\] \(line 4\) 'm:k2': signature.x: unknown type '\*fp33'"),
    ('[[kernels]]\nname = "mine"\nfn = "m:k"\nsignatures = {}\n', "toml",
     r"kernels\[0\] \(line 1\) 'mine': unknown key 'signatures' \(did you mean 'signature'\?\)"),
    ('[[kernels]]\nfn = "m:k"\n[[kernels.variants]]\nconstexprs = { B = 1 }\n[[kernels.variants]]\nfn = "x:y"\n',
     "toml", r"kernels\[0\] \(line 1\) 'm:k' variants\[1\]: unknown key 'fn'"),
    ('[[kernels]]\nfn = "m:k"\noptions = { num_warps = 3.5 }\n', "toml",
     r"kernels\[0\] \(line 1\) 'm:k': options.num_warps: must be a positive integer"),
    ('{"kernels": [{"fn": "m:k"}, {"source": "x.py"}]}', "json", r"k.json: kernels\[1\]: function: None must name"),
    ('{"kernels": {"fn": "m:k"}}', "json", "kernels: must be a list"),
    ('[1, 2]', "json", "the document must be a table/object"),
])
def test_bad_kernel_lists(text, fmt, match) -> None:
    with pytest.raises(KernelSpecError, match=match):
        parse_kernel_list(text, fmt, origin=f"k.{fmt}")


def test_load_kernel_list_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KernelSpecError, match="must be a .toml or .json file"):
        load_kernel_list(tmp_path / "kernels.yaml")
    with pytest.raises(KernelSpecError, match="no such file"):
        load_kernel_list(tmp_path / "absent.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KernelSpecError, match="cannot read"):
        load_kernel_list(bad)


def test_sample_specs_are_distinct_and_varied() -> None:
    from pyruntime.bench.kernels import sample_specs

    specs = sample_specs(48, "cuda:80")
    assert len(specs) == 48 and len({s.key() for s in specs}) == 48
    assert {s.target for s in specs} == {"cuda:80"}
    assert len({s.function_name for s in specs[:6]}) == 6  # every family in any short prefix
    assert sample_specs(48, "cuda:80") == specs  # deterministic
    assert len({s.key() for s in sample_specs(600)}) == 600
    with pytest.raises(ValueError, match="only .* distinct sample kernels"):
        sample_specs(100_000)


# ------------------------------------------------------------ None, fn_hash, the JIT's traps


def test_none_in_toml_and_null_in_json_are_the_same() -> None:
    toml_text = ('[[kernels]]\nfn = "m:k"\nsignature = { x_ptr = "*fp32" }\nconstexprs = { BLOCK = 64 }\n'
                 'none = ["bias_ptr"]\n[[kernels.variants]]\n[[kernels.variants]]\nnone = ["res_ptr"]\n'
                 'constexprs = { BLOCK = 128 }\n')
    a, b = parse_kernel_list(toml_text, "toml", origin="k.toml")
    assert a.constexprs == {"BLOCK": 64, "bias_ptr": None}
    assert b.constexprs == {"BLOCK": 128, "bias_ptr": None, "res_ptr": None}
    assert a.label == "k[BLOCK=64,bias_ptr=None,fp32]"
    j = json.dumps({"kernels": [{"fn": "m:k", "signature": {"x_ptr": "*fp32"},
                                 "constexprs": {"BLOCK": 64, "bias_ptr": None}}]})
    assert parse_kernel_list(j, "json", origin="k.json") == [a]
    j2 = json.dumps({"kernels": [{"fn": "m:k", "signature": {"x_ptr": "*fp32"}, "constexprs": {"BLOCK": 64},
                                  "none": ["bias_ptr"]}]})
    assert parse_kernel_list(j2, "json", origin="k.json") == [a]


@pytest.mark.parametrize("text, match", [
    ('[[kernels]]\nfn = "m:k"\nnone = "bias"\n', r"kernels\[0\] \(line 1\) 'm:k': none: must be a list of argument"),
    ('[[kernels]]\nfn = "m:k"\nnone = ["b"]\nconstexprs = { b = 3 }\n',
     r"none: 'b' also has the value 3 in constexprs; give it one or the other"),
    ('[[kernels]]\nfn = "m:k"\nnone = ["x"]\nsignature = { x = "*fp32" }\n',
     r"constexprs.x: argument 'x' is typed '\*fp32' in the signature"),
    ('[[kernels]]\nfn = "m:k"\nnones = ["x"]\n', r"unknown key 'nones' \(did you mean 'none'\?\)"),
    ('[[kernels]]\nfn = "m:k"\nfn_hash = "xyz"\n', r"fn_hash: 'xyz' must be the hex digest"),
])
def test_none_and_fn_hash_errors(text, match) -> None:
    with pytest.raises(KernelSpecError, match=match):
        parse_kernel_list(text, "toml", origin="k.toml")


def test_fn_hash_is_not_part_of_the_build_key() -> None:
    a = KernelSpec(fn="m:k", signature=SIG, fn_hash="ab" * 32)
    assert a.key() == KernelSpec(fn="m:k", signature=SIG).key() and a.to_dict()["fn_hash"] == "ab" * 32


@pytest.fixture
def tkern(tmp_path: Path) -> str:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import standin

    return str(standin.write_kernels(tmp_path))


@pytest.mark.parametrize("function, fields, match", [
    ("add_kernel", {"signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32"}, "constexprs": {"n": 5}},
     r"constexprs.n: 'n' is a runtime argument of add_kernel \(not tl.constexpr\); the JIT makes it a constexpr only "
     r"when a launch passes None or the int 1, not 5"),
    ("add_kernel", {"signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                                  "BLOCK": "i32"}, "constexprs": {}},
     r"signature.BLOCK: add_kernel declares 'BLOCK' tl.constexpr; give its value in constexprs"),
    ("dns_kernel", {"divisibility": ["n"]},
     r"divisibility.n: 'n' is in the function's do_not_specialize, so the JIT gives it no divisibility"),
    ("dns_kernel", {"divisibility": ["x_ptr"]}, r"divisibility.x_ptr: 'x_ptr' is in the function's "
                                                r"do_not_specialize_on_alignment"),
    ("dns_kernel", {"signature": {"x_ptr": "*fp32", "out_ptr": "*fp32", "stride": "i32"}, "constexprs": {"n": 1}},
     r"constexprs.n: dns_kernel lists 'n' in do_not_specialize, so the JIT passes it as a runtime int even when it "
     r"is 1"),
    ("ann_kernel", {"signature": {"x_ptr": "*fp16", "out_ptr": "*fp16", "n": "i32", "scale": "fp32"}},
     r"signature.n: ann_kernel annotates 'n' as 'i64', so the JIT types it 'i64' whatever the value; not 'i32'"),
    ("ann_kernel", {"divisibility": ["scale"]}, r"divisibility.scale: the JIT never specialises fp32 arguments"),
    ("add_kernel", {"divisibility": ["x_pt"]}, r"divisibility.x_pt: add_kernel has no argument 'x_pt' "
                                               r"\(did you mean 'x_ptr'\?\)"),
])
def test_compile_inputs_refuse_what_the_jit_never_does(tkern, function, fields, match) -> None:
    base = {"add_kernel": {"signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}},
            "dns_kernel": {"signature": {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "stride": "i32"}},
            "ann_kernel": {"signature": {"x_ptr": "*fp16", "out_ptr": "*fp16"}}}[function]
    spec = KernelSpec(source=tkern, function=function, **{**base, "constexprs": {"BLOCK": 64}, **fields})
    with pytest.raises(KernelSpecError, match=match):
        compile_inputs(spec)


def test_check_spec_warns_when_the_code_differs_from_the_recorded(tkern) -> None:
    from pyruntime.specialize import check_spec

    sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
    spec = KernelSpec(source=tkern, function="add_kernel", signature=sig, constexprs={"BLOCK": 64})
    fn = spec.load_function()
    assert check_spec(spec, fn) == []
    stale = KernelSpec(source=tkern, function="add_kernel", signature=sig, constexprs={"BLOCK": 64}, fn_hash="0" * 64)
    (w,) = check_spec(stale, fn)
    assert "code here hashes" in w and "picks kernel code by device at import" in w


@pytest.mark.timeout(120)
def test_dry_run_checks_every_name_against_the_function(tkern, tmp_path: Path) -> None:
    import subprocess
    import sys

    good = tmp_path / "good.toml"
    good.write_text('[[kernels]]\nsource = "tkern.py"\nfunction = "bias_kernel"\n'
                    'signature = { x_ptr = "*fp32", out_ptr = "*fp32", n = "i32" }\n'
                    'constexprs = { BLOCK = 64 }\nnone = ["bias_ptr"]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[kernels]]\nsource = "tkern.py"\nfunction = "add_kernel"\nname = "typo"\n'
                   'signature = { x_ptr = "*fp32", y_ptr = "*fp32", out_pt = "*fp32", n = "i32" }\n'
                   'constexprs = { BLOCK = 64 }\n'
                   '[[kernels]]\nsource = "tkern.py"\nfunction = "bias_kernel"\nname = "fine"\n'
                   'signature = { x_ptr = "*fp32", out_ptr = "*fp32", n = "i32" }\n'
                   'constexprs = { BLOCK = 64 }\nnone = ["bias_ptr"]\n')

    def run(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyruntime", "precompile", str(path), "--dry-run",
                               "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, timeout=100)

    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("precompile: 1 kernels would be built into")
    out = run(bad)
    assert out.returncode == 2
    assert (f"pyruntime: error: {bad}: typo (cuda:90): signature.out_pt: add_kernel has no argument 'out_pt' "
            "(did you mean 'out_ptr'?)") in out.stderr
    assert "fine" in out.stdout and out.stdout.splitlines()[-1] == \
        "precompile: 1 of 2 kernels are wrong (see above); fix them before building"
    assert not (tmp_path / "cache").exists()
