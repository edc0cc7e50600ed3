"""Recorded kernel lists (pyruntime.record, ``python -m pyruntime record``)
on Triton's real JIT path, with the stand-in driver of tests/standin.py.

The claim tested end to end: what a program's launches compiled, recorded
as a kernel list and precompiled by pyruntime, lands under exactly the same
cache keys; and the same list built for another target gives the keys the
JIT computes there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import standin  # noqa: E402

from pyruntime.kernels import load_kernel_list  # noqa: E402
from pyruntime.record import render_kernel_list  # noqa: E402

# Every kind of specialisation: divisibility, an int equal to 1, None, do_not_specialize and
# do_not_specialize_on_alignment, annotations, a string constexpr, an autotuned kernel (each config).
LAUNCHES = '''
import tkern
T, H = standin.tensor(), standin.tensor("fp16")
U = standin.tensor(aligned=False)
def launch_all():
    tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
    tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))  # the same again: one entry
    tkern.add_kernel.warmup(T, T, T, 1, BLOCK=256, grid=(1,), num_warps=8)
    tkern.add_kernel.warmup(U, T, T, 4097, BLOCK=256, grid=(1,))
    tkern.bias_kernel.warmup(T, None, T, 4096, BLOCK=512, grid=(1,))
    tkern.bias_kernel.warmup(T, T, T, 4096, BLOCK=512, grid=(1,))
    tkern.dns_kernel.warmup(T, T, 16, 16, BLOCK=64, grid=(1,))
    tkern.dns_kernel.warmup(T, T, 1, 3, BLOCK=64, grid=(1,))
    tkern.ann_kernel.warmup(H, H, 4096, 0.5, BLOCK=128, ACT="relu", grid=(1,))
    tkern.tuned_kernel.warmup(T, T, 4096, grid=(1,))  # the autotuner builds every config
'''

N_ENTRIES = 11  # distinct specialisations above: 9 plus 3 autotune configs, less the repeat


def _script(body: str) -> str:
    return textwrap.dedent(body)


@pytest.mark.timeout(600)
def test_recorded_list_precompiles_to_the_jits_keys(tmp_path: Path) -> None:
    standin.write_kernels(tmp_path)
    jit_cache = tmp_path / "jit-cache"
    rec = tmp_path / "lists" / "kernels.toml"
    report = standin.run(LAUNCHES + _script(f'''
    import pyruntime, triton
    standin.install()
    with pyruntime.record_launches({str(rec)!r}) as r:
        launch_all()
        tkern.make_local().warmup(T, BLOCK=16, grid=(1,))
    print(json.dumps({{"specs": len(r.specs), "skipped": r.skipped, "errors": r.errors,
                      "hook_after": triton.knobs.runtime.jit_post_compile_hook is None}}))
    '''), tmp_path, env={"TRITON_CACHE_DIR": str(jit_cache)})
    assert report["errors"] == [] and report["hook_after"]
    assert report["specs"] == N_ENTRIES
    assert len(report["skipped"]) == 1 and "local_kernel" in report["skipped"][0]
    text = rec.read_text()
    assert text.startswith("# Kernel list recorded by `python -m pyruntime record`")
    assert 'none = ["bias_ptr"]' in text
    assert "constexprs = { n = 1, BLOCK = 256 }" in text
    assert 'python_path = [".."]' in text  # the kernels' module sits in tmp_path, the list in tmp_path/lists
    specs = load_kernel_list(rec)
    assert len(specs) == N_ENTRIES
    assert all(s.fn and s.fn.startswith("tkern:") and s.fn_hash for s in specs)
    tuned = sorted((s.constexprs["BLOCK"], s.options["num_warps"]) for s in specs if s.fn == "tkern:tuned_kernel")
    assert tuned == [(64, 2), (128, 4), (256, 8)]
    dns = [s for s in specs if s.fn == "tkern:dns_kernel"]
    assert {s.signature["n"] for s in dns} == {"i32"}  # do_not_specialize: never the constexpr 1
    assert all("n" not in s.divisibility and "x_ptr" not in s.divisibility for s in dns)
    ann = next(s for s in specs if s.fn == "tkern:ann_kernel")
    assert ann.signature["n"] == "i64" and ann.constexprs["ACT"] == "relu"

    # precompile the recorded list with the real command: exactly the JIT's cache keys
    built = tmp_path / "built"
    out = subprocess.run([sys.executable, "-m", "pyruntime", "precompile", str(rec), "--cache-dir", str(built),
                          "--workers", "1", "-q"], capture_output=True, text=True, timeout=500,
                         env=dict(os.environ, TRITON_DEFAULT_FP_FUSION="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jit_dirs, built_dirs = standin.cache_dirs(jit_cache), standin.cache_dirs(built)
    assert len(built_dirs) == N_ENTRIES and built_dirs < jit_dirs
    (local,) = jit_dirs - built_dirs  # the one kernel that was not recorded
    assert (jit_cache / local / "local_kernel.json").exists()


@pytest.mark.timeout(600)
def test_a_recorded_list_builds_for_other_targets(tmp_path: Path) -> None:
    standin.write_kernels(tmp_path)
    rec = tmp_path / "kernels.json"
    standin.run(LAUNCHES + _script(f'''
    import pyruntime
    standin.install()
    with pyruntime.record_launches({str(rec)!r}):
        launch_all()
    print("{{}}")
    '''), tmp_path, env={"TRITON_CACHE_DIR": str(tmp_path / "jit-cache")})
    doc = json.loads(rec.read_text())
    assert doc["target"] == "cuda:90" and len(doc["kernels"]) == N_ENTRIES
    for target, arch in (("cuda:80", 80), ("cuda:100", 100)):
        cache = tmp_path / f"built-{arch}"
        out = subprocess.run([sys.executable, "-m", "pyruntime", "precompile", str(rec), "--target", target,
                              "--cache-dir", str(cache), "--workers", "1", "-q"], capture_output=True, text=True,
                             timeout=500, env=dict(os.environ, TRITON_DEFAULT_FP_FUSION="1"))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # the JIT on a machine of that architecture looks up exactly these
        report = standin.run(LAUNCHES + _script(f'''
        standin.install(("cuda", {arch}, 32))
        before = standin.cache_dirs({str(cache)!r})
        launch_all()
        print(json.dumps({{"new": sorted(standin.cache_dirs({str(cache)!r}) - before), "n": len(before)}}))
        '''), tmp_path, env={"TRITON_CACHE_DIR": str(cache)})
        assert report["n"] == N_ENTRIES and report["new"] == [], target


APP = '''
import os, subprocess, sys
sys.path.insert(0, {here!r})
import warnings; warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
import standin
role = sys.argv[1]
import triton
standin.install()
import tkern
T = standin.tensor()
if role == "parent":
    kids = [subprocess.Popen([sys.executable, __file__, f"child{{i}}"]) for i in (1, 2)]
    tkern.add_kernel.warmup(T, T, T, 4096, BLOCK=1024, grid=(1,))
    assert [k.wait() for k in kids] == [0, 0]
    print("SITE", os.environ.get("OLD_SITE_RAN"))
    sys.exit(3)
block = {{"child1": 128, "child2": 256}}[role]
for n in (4096, 4097, 1, 2**40):  # divisible, not, the constexpr 1, an i64
    tkern.add_kernel.warmup(T, T, T, n, BLOCK=block, grid=(1,))
'''


@pytest.mark.timeout(600)
def test_record_command_records_every_python_process(tmp_path: Path) -> None:
    standin.write_kernels(tmp_path)
    (tmp_path / "app.py").write_text(APP.format(here=HERE))
    # an existing sitecustomize on the path still runs under the recorder's shim
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['OLD_SITE_RAN'] = 'yes'\n")
    out_file = tmp_path / "rec.toml"
    out_file.write_text(render_kernel_list({"target": "cuda:90", "kernels": [
        {"fn": "tkern:add_kernel", "signature": standin.ADD_SIG, "constexprs": {"BLOCK": 1024},
         "divisibility": ["x_ptr", "y_ptr", "out_ptr", "n"], "options": {"num_warps": 4, "num_stages": 3}},
        {"fn": "some.other:kernel", "signature": {"x": "i32"}}]}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYRUNTIME_RECORD", "PYRUNTIME_JIT")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(tmp_path)]), TRITON_CACHE_DIR=str(tmp_path / "cache"),
               TRITON_DEFAULT_FP_FUSION="1")
    out = subprocess.run([sys.executable, "-m", "pyruntime", "record", "-o", str(out_file), "--",
                          sys.executable, str(tmp_path / "app.py"), "parent"], capture_output=True, text=True,
                         timeout=500, env=env, cwd=str(tmp_path))
    assert out.returncode == 3, out.stderr[-3000:]  # the command's own exit status
    assert "SITE yes" in out.stdout
    assert f"record: {out_file}: 10 kernel entries, 8 new, from {sys.executable}" in out.stderr
    specs = load_kernel_list(out_file)
    assert len(specs) == 10  # the two written by hand (one the parent's launch: not added twice) + 2 x 4 from children
    assert {s.constexprs.get("BLOCK") for s in specs if s.fn == "tkern:add_kernel"} == {128, 256, 1024}
    # recording again changes nothing
    again = subprocess.run([sys.executable, "-m", "pyruntime", "record", "-o", str(out_file), "--",
                            sys.executable, str(tmp_path / "app.py"), "child1"], capture_output=True, text=True,
                           timeout=300, env=env, cwd=str(tmp_path))
    assert again.returncode == 0 and "10 kernel entries, 0 new" in again.stderr, again.stderr[-2000:]


@pytest.mark.timeout(300)
def test_what_a_kernel_list_cannot_express_is_skipped_not_mis_recorded(tmp_path: Path) -> None:
    standin.write_kernels(tmp_path)
    rec = tmp_path / "k.toml"
    report = standin.run(_script(f'''
    import pyruntime, tkern
    standin.install()
    H = standin.tensor("fp16")
    with pyruntime.record_launches({str(rec)!r}) as r:
        tkern.ann_kernel.warmup(H, H, 1, 0.5, BLOCK=128, grid=(1,))  # n: tl.int64 annotated, launched as 1
    print(json.dumps({{"specs": len(r.specs), "skipped": r.skipped}}))
    '''), tmp_path, env={"TRITON_CACHE_DIR": str(tmp_path / "cache")})
    assert report["specs"] == 0 and not rec.exists()
    assert "n launched as 1 with a type annotation" in report["skipped"][0]


def test_record_command_errors(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyruntime", "record", *args], capture_output=True, text=True,
                              timeout=60, cwd=str(tmp_path))

    out = run("-o", "k.toml")
    assert out.returncode == 2 and "give the command to run after --" in out.stderr
    out = run("-o", "k.yaml", "--", "true")
    assert out.returncode == 2 and "must be a .toml or .json file" in out.stderr
    out = run("-o", "k.toml", "--", str(tmp_path / "no-such-program"))
    assert out.returncode == 2 and "record: cannot run" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "bad.toml").write_text("kernels = 3\n")
    out = run("-o", "bad.toml", "--", "true")
    assert out.returncode == 2 and "kernels: must be a list" in out.stderr


def test_render_round_trips_the_schema(tmp_path: Path) -> None:
    doc = {"version": 1, "target": "cuda:80", "python_path": ["src"],
           "defaults": {"options": {"num_warps": 4}, "divisibility": ["x_ptr"]},
           "kernels": [{"name": "a \"quoted\" label", "fn": "m:k", "signature": {"x_ptr": "*fp32", "n": "i32"},
                        "constexprs": {"B": 64, "S": "tl.float16", "F": 0.5, "E": 1e-05, "T": True, "Z": None},
                        "variants": [{"constexprs": {"B": 128}}, {"options": {"num_stages": 2}, "target": "cuda:90"}]}]}
    text = render_kernel_list(doc)
    assert 'none = ["Z"]' in text and "[[kernels.variants]]" in text
    f = tmp_path / "k.toml"
    f.write_text(text)
    g = tmp_path / "k.json"
    g.write_text(json.dumps(doc))
    assert load_kernel_list(f) == load_kernel_list(g)
