"""torch.compile warm start from one verified file (pyruntime.torch.artifacts,
``python -m pyruntime torch ...``) against the installed torch (CPU here:
Inductor's C++ backend has the same caches as on a GPU).

One real export (a tiny model compiled in a fresh interpreter with its own
cache directory, through ``torch export`` and the API at once) feeds every
test. Second processes load it into empty caches and compile again: the FX
graph and AOTAutograd caches hit, no C++ kernel is rebuilt, the outputs are
bit for bit the export's. Tampered, unsigned, forged and foreign files are
refused before torch sees anything: torch's ``load_cache_artifacts`` is
never called and the cache directory stays empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import pyruntime  # noqa: E402
from pyruntime import cli  # noqa: E402
from pyruntime.errors import BundleCompatibilityError, BundleFormatError, PyRuntimeError  # noqa: E402
from pyruntime import artifacts_file as F  # noqa: E402
from pyruntime.torch import artifacts as A  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

JOB = textwrap.dedent('''
    """Compile a tiny model once; optionally load artifacts first or save them after."""
    import json, os, sys
    import torch
    import torch._inductor.cpp_builder as cb
    import pyruntime.torch as pt

    builds = []
    _build = cb.CppBuilder.build

    def build(self, *a, **k):  # every C++ build Inductor starts, by its output path
        builds.append(self.get_target_file_path())
        return _build(self, *a, **k)

    cb.CppBuilder.build = build

    def main():
        out = sys.argv[1]
        report = pt.load_compile_artifacts(sys.argv[sys.argv.index("--load") + 1]) if "--load" in sys.argv else None
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                                    torch.nn.Linear(32, 8)).eval()
        x = torch.randn(4, 16)
        with torch.no_grad():
            y = torch.compile(model)(x)
        counters = torch._dynamo.utils.counters
        res = {"out": y.flatten().tolist(), "builds": builds, "cache_dir": os.environ["TORCHINDUCTOR_CACHE_DIR"],
               "counters": {g: dict(counters[g]) for g in ("inductor", "aot_autograd")}}
        if "--save" in sys.argv:
            s = pt.save_compile_artifacts(sys.argv[sys.argv.index("--save") + 1])
            res["save"] = {"counts": s.counts, "notes": s.notes}
        if report is not None:
            res["report"] = report.finish().to_dict()
        with open(out, "w") as f:
            json.dump(res, f)

    main()
''')


def _env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_CACHE_DIR", None)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # no compile-worker pool: quicker on small machines
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(args: list[str], cache_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], env=_env(cache_dir), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _cache_builds(res: dict) -> list[str]:
    """C++ builds whose output goes into the cache (a rebuilt kernel); torch
    also preprocesses a header in a temporary directory in every process."""
    return [b for b in res["builds"] if b.startswith(res["cache_dir"])]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``python -m pyruntime torch export`` (cli.prta) of a script that also
    calls ``save_compile_artifacts`` (api.prta): a cold compile in a fresh
    interpreter and cache, then the warm pass that saves."""
    d = tmp_path_factory.mktemp("export")
    (d / "job.py").write_text(JOB)
    _run(["-m", "pyruntime", "torch", "export", "-o", str(d / "cli.prta"), "--cache-dir", str(d / "cache"), "--",
          str(d / "job.py"), str(d / "export.json"), "--save", str(d / "api.prta")], d / "unused", timeout=400)
    res = json.loads((d / "export.json").read_text())
    return {"dir": d, "job": d / "job.py", "cli": d / "cli.prta", "api": d / "api.prta", "res": res}


class _TorchLoadSpy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes):  # pragma: no cover - must never run in these tests
        self.calls += 1
        raise AssertionError("torch.compiler.load_cache_artifacts was called")


@pytest.fixture
def spy(monkeypatch):
    s = _TorchLoadSpy()
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", s)
    return s


def _entries(path: Path) -> list[tuple[str, bytes]]:
    return pyruntime.unpack(path.read_bytes())


def _repack(entries: list[tuple[str, bytes]], path: Path) -> Path:
    path.write_bytes(pyruntime.pack(entries))
    return path


def _with_manifest(src: Path, dst: Path, edit) -> Path:
    """``src`` with its manifest edited (the digest follows: unsigned files
    can be rewritten, which is what signatures are for)."""
    entries = _entries(src)
    m = json.loads(entries[0][1])
    edit(m)
    entries[0] = ("manifest.json", F._json_bytes(m))
    return _repack(entries, dst)


# --------------------------------------------------------------------------
# the round trip


@pytest.mark.timeout(400)
def test_export_holds_the_caches(exported):
    res = exported["res"]  # the export's second pass, on the first one's caches
    assert res["counters"]["inductor"].get("fxgraph_cache_hit", 0) >= 1
    assert res["save"]["counts"].get("megacache.inductor", 0) >= 1
    assert res["save"]["counts"].get("cpp", 0) >= 1  # the C++ kernels it built and loaded
    for name in ("cli", "api"):
        info = A.read_compile_artifacts(exported[name])
        kinds = {p.kind for p in info.parts}
        assert {"megacache", "cpp"} <= kinds, kinds
        assert info.signature == "unsigned"
        assert info.environment["torch"] == torch.__version__
        assert info.megacache_keys["inductor"]


@pytest.mark.timeout(400)
def test_second_process_hits_and_recompiles_nothing(exported, tmp_path):
    cache = tmp_path / "cache"
    _run([str(exported["job"]), str(tmp_path / "r.json"), "--load", str(exported["api"])], cache)
    res = json.loads((tmp_path / "r.json").read_text())
    ind, aot = res["counters"]["inductor"], res["counters"]["aot_autograd"]
    assert ind.get("fxgraph_cache_hit", 0) > 0
    assert ind.get("fxgraph_cache_miss", 0) == 0 and ind.get("fxgraph_cache_bypass", 0) == 0
    assert aot.get("autograd_cache_hit", 0) > 0 and aot.get("autograd_cache_miss", 0) == 0
    assert _cache_builds(res) == [], "a C++ kernel was rebuilt"
    assert res["out"] == exported["res"]["out"]  # bit for bit: the same kernels ran
    rep = res["report"]
    assert rep["finished"]
    fx, cpp = rep["kinds"]["fx_graph"], rep["kinds"]["cpp"]
    assert fx["loaded"] >= 1 and fx["hits"] >= 1 and fx["misses"] == 0, fx
    assert cpp["loaded"] >= 1 and cpp["misses"] == 0 and cpp["skipped"] == 0, cpp
    assert rep["kinds"]["aot_autograd"]["hits"] >= 1


@pytest.mark.timeout(400)
def test_cli_import_runs_the_script_and_reports(exported, tmp_path):
    cache = tmp_path / "cache"
    proc = _run(["-m", "pyruntime", "torch", "import", str(exported["cli"]), "--cache-dir", str(cache),
                 "--report", str(tmp_path / "report.json"), "--", str(exported["job"]), str(tmp_path / "r.json")],
                tmp_path / "unused")
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["cache_dir"] == str(cache)
    assert res["counters"]["inductor"].get("fxgraph_cache_hit", 0) > 0
    assert res["counters"]["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert _cache_builds(res) == []
    assert res["out"] == exported["res"]["out"]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["kinds"]["fx_graph"]["hits"] >= 1 and rep["kinds"]["fx_graph"]["misses"] == 0
    assert "fx_graph" in proc.stderr and "hits" in proc.stderr  # the table


@pytest.mark.timeout(120)
def test_report_names_a_miss_and_its_reason(exported, tmp_path):
    """A graph the file does not hold: the report counts the miss and says why."""
    report = A.load_compile_artifacts(exported["api"], cache_dir=tmp_path / "cache")
    try:
        old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "cache")
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(lambda a: torch.relu(a) * 3 + 1)(torch.randn(5, 3))
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        report.finish()
    fx = report.kinds["fx_graph"]
    assert fx.misses >= 1 and fx.hits == 0
    assert any("is not in the file" in r for r in fx.reasons), fx.reasons
    text = report.format()
    assert "fx_graph" in text and "not in the file" in text


# --------------------------------------------------------------------------
# refused before torch sees anything


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x40
    return bytes(b)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["flip-part", "flip-manifest", "flip-index", "truncate", "swap-blobs", "drop-part",
                                 "extra-entry", "edit-sha"])
def test_tampered_file_is_refused_before_torch(exported, tmp_path, spy, how):
    src = exported["api"]
    data = src.read_bytes()
    bad = tmp_path / "bad.prta"
    entries = _entries(src)
    data_start = 32 + int.from_bytes(data[12:16], "little")  # pack header, then the index
    if how == "flip-part":  # the last bytes are the last part's data
        bad.write_bytes(_flip(_flip(data, len(data) - 9), len(data) - 20))
    elif how == "flip-manifest":  # the first entry's data
        bad.write_bytes(_flip(_flip(data, data_start + 10), data_start + 30))
    elif how == "flip-index":
        bad.write_bytes(_flip(data, 34))
    elif how == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif how == "swap-blobs":  # a valid container whose parts do not match the manifest
        parts = [e for e in entries if e[0].startswith("part.")]
        assert len(parts) >= 2
        i, j = 0, 1
        entries[1 + i], entries[1 + j] = (parts[i][0], parts[j][1]), (parts[j][0], parts[i][1])
        _repack(entries, bad)
    elif how == "drop-part":
        _repack(entries[:-1], bad)
    elif how == "extra-entry":
        _repack(entries + [("part.999", b"x")], bad)
    elif how == "edit-sha":  # the manifest names a part that is not in the file
        def edit(m):
            m["parts"][-1]["sha256"] = "0" * 64
        _with_manifest(src, bad, edit)
    cache = tmp_path / "cache"
    with pytest.raises(BundleFormatError):
        A.load_compile_artifacts(bad, cache_dir=cache)
    assert spy.calls == 0
    assert _files(cache) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("edit,message", [
    (lambda m: m["parts"].append({"kind": "cpp", "root": "inductor", "path": "../evil.so", "size": 1,
                                  "sha256": "0" * 64}), "not <dir>/<file>"),
    (lambda m: m["parts"].append({"kind": "cpp", "root": "inductor", "path": "fxgraph/x.so", "size": 1,
                                  "sha256": "0" * 64}), "not where cpp files go"),
    (lambda m: m["parts"].append({"kind": "autotune", "root": "inductor", "path": "ab/x.py", "size": 1,
                                  "sha256": "0" * 64}), "not where autotune files go"),
    (lambda m: m["parts"].append({"kind": "pickle", "size": 1, "sha256": "0" * 64}), "unknown kind"),
    (lambda m: m.update(format_version=2), "unknown format version"),
    (lambda m: m["environment"].update(extra="x"), "environment"),
])
def test_hostile_manifest_is_refused(exported, tmp_path, spy, edit, message):
    bad = _with_manifest(exported["api"], tmp_path / "bad.prta", edit)
    with pytest.raises(BundleFormatError, match=message):
        A.load_compile_artifacts(bad, cache_dir=tmp_path / "cache")
    assert spy.calls == 0 and _files(tmp_path / "cache") == []


@pytest.mark.timeout(60)
def test_autotune_part_must_be_json(exported, tmp_path, spy):
    src = _entries(exported["api"])
    blob = b"\x80\x04not json"
    m = json.loads(src[0][1])
    m["parts"].append({"kind": "autotune", "root": "inductor", "path": "ab/k.best_config", "size": len(blob),
                       "sha256": hashlib.sha256(blob).hexdigest()})
    bad = _repack([("manifest.json", F._json_bytes(m)), *src[1:], (f"part.{len(m['parts']) - 1}", blob)],
                  tmp_path / "bad.prta")
    with pytest.raises(BundleFormatError, match="autotune"):
        A.load_compile_artifacts(bad, cache_dir=tmp_path / "cache")
    assert spy.calls == 0 and _files(tmp_path / "cache") == []


@pytest.mark.timeout(60)
def test_cli_refuses_a_tampered_file_in_one_line(exported, tmp_path, capsys, monkeypatch, spy):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    data = exported["cli"].read_bytes()
    bad = tmp_path / "bad.prta"
    bad.write_bytes(data[:-1])
    cache = tmp_path / "cache"
    assert cli.main(["torch", "import", str(bad), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyruntime: error:") and "refused" in err and "\n" not in err
    assert spy.calls == 0 and _files(cache) == []
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert cli.main(["torch", "verify", str(bad)]) == 1
    assert "INVALID" in capsys.readouterr().err
    assert cli.main(["torch", "verify", str(exported["cli"])]) == 0
    assert "OK" in capsys.readouterr().out


# --------------------------------------------------------------------------
# another environment


@pytest.mark.timeout(60)
def test_other_torch_version_is_skipped_with_a_reason(exported, tmp_path, spy):
    def edit(m):
        m["environment"]["torch"] = "1.0.0"

    other = _with_manifest(exported["api"], tmp_path / "other.prta", edit)
    with pytest.raises(BundleCompatibilityError, match="torch 1.0.0"):
        A.load_compile_artifacts(other, cache_dir=tmp_path / "c1", on_mismatch="error")
    assert _files(tmp_path / "c1") == []
    with pytest.warns(UserWarning, match="torch 1.0.0"):
        report = A.load_compile_artifacts(other, cache_dir=tmp_path / "c2", watch=False)
    assert spy.calls == 0 and _files(tmp_path / "c2") == []
    fx = report.kinds["fx_graph"]
    assert fx.skipped >= 1 and fx.loaded == 0 and "torch 1.0.0" in fx.reasons[0]
    assert report.kinds["cpp"].skipped >= 1


@pytest.mark.timeout(60)
def test_cpp_kernels_need_the_cpu_features_they_were_built_for(exported, tmp_path):
    def edit(m):
        m["environment"]["cpu_flags"] = sorted(m["environment"]["cpu_flags"] + ["made_up_feature"])

    other = _with_manifest(exported["api"], tmp_path / "other.prta", edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = A.load_compile_artifacts(other, cache_dir=tmp_path / "cache", watch=False)
    cpp = report.kinds["cpp"]
    assert cpp.loaded == 0 and cpp.skipped >= 1 and "made_up_feature" in cpp.reasons[0]
    assert report.kinds["fx_graph"].loaded >= 1  # the rest still loads
    assert not any(f.endswith(".so") for f in _files(tmp_path / "cache"))


# --------------------------------------------------------------------------
# signatures


@pytest.fixture
def keys(tmp_path):
    pytest.importorskip("cryptography")
    pub = A.generate_signing_key(tmp_path / "key.pem", tmp_path / "key.pub")
    other = A.generate_signing_key(tmp_path / "other.pem", tmp_path / "other.pub")
    return {"priv": tmp_path / "key.pem", "pub": pub, "pubfile": tmp_path / "key.pub",
            "other_priv": tmp_path / "other.pem", "other_pub": other}


@pytest.mark.timeout(120)
def test_signed_file_loads_with_its_trusted_key(exported, tmp_path, keys):
    signed = tmp_path / "signed.prta"
    assert A.sign_compile_artifacts(exported["api"], keys["priv"], signed) == keys["pub"]
    info = A.read_compile_artifacts(signed, trusted_keys=[keys["pubfile"]])
    assert info.signature == "verified (trusted key)" and info.signed_by == keys["pub"]
    assert info.content_digest == A.read_compile_artifacts(exported["api"]).content_digest
    report = A.load_compile_artifacts(signed, trusted_keys=[keys["pub"]], require_signature=True,
                                      cache_dir=tmp_path / "cache", watch=False)
    assert report.signed_by == keys["pub"] and report.kinds["fx_graph"].loaded >= 1
    assert any(f.startswith("fxgraph/") for f in _files(tmp_path / "cache"))


@pytest.mark.timeout(60)
def test_unsigned_file_is_refused_when_a_signature_is_required(exported, tmp_path, keys, spy):
    with pytest.raises(A.SignatureError, match="not signed"):
        A.load_compile_artifacts(exported["api"], trusted_keys=[keys["pub"]], require_signature=True,
                                 cache_dir=tmp_path / "cache")
    with pytest.raises(PyRuntimeError, match="needs trusted_keys"):
        A.load_compile_artifacts(exported["api"], require_signature=True, cache_dir=tmp_path / "cache")
    assert spy.calls == 0 and _files(tmp_path / "cache") == []


@pytest.mark.timeout(60)
def test_wrong_key_is_refused(exported, tmp_path, keys, spy):
    signed = tmp_path / "signed.prta"
    A.sign_compile_artifacts(exported["api"], keys["other_priv"], signed)  # someone else's key
    with pytest.raises(A.SignatureError, match="not a trusted key"):
        A.load_compile_artifacts(signed, trusted_keys=[keys["pub"]], cache_dir=tmp_path / "cache")
    assert spy.calls == 0 and _files(tmp_path / "cache") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("forgery", ["manifest", "signature", "part"])
def test_forged_signature_is_refused(exported, tmp_path, keys, spy, forgery):
    signed = tmp_path / "signed.prta"
    A.sign_compile_artifacts(exported["api"], keys["priv"], signed)
    entries = _entries(signed)
    assert entries[1][0] == "signature.json"
    if forgery == "manifest":  # content changed, old signature kept
        m = json.loads(entries[0][1])
        m["pyruntime_version"] = "9.9.9"
        entries[0] = ("manifest.json", F._json_bytes(m))
        match = "does not match"
    elif forgery == "signature":  # a signature byte changed
        sig = json.loads(entries[1][1])
        sig["signature"] = ("1" if sig["signature"][0] != "1" else "2") + sig["signature"][1:]
        entries[1] = ("signature.json", F._json_bytes(sig))
        match = "does not match"
    else:  # a part replaced, manifest and signature kept
        name, blob = entries[-1]
        entries[-1] = (name, blob[:-1] + bytes([blob[-1] ^ 1]))
        match = "SHA-256"
    forged = _repack(entries, tmp_path / "forged.prta")
    with pytest.raises(BundleFormatError, match=match):
        A.load_compile_artifacts(forged, trusted_keys=[keys["pub"]], cache_dir=tmp_path / "cache")
    assert spy.calls == 0 and _files(tmp_path / "cache") == []


@pytest.mark.timeout(60)
def test_cli_sign_verify_and_inspect(exported, tmp_path, keys, capsys):
    out = tmp_path / "s.prta"
    assert cli.main(["torch", "sign", str(exported["cli"]), "--key", str(keys["priv"]), "-o", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["torch", "verify", str(out), "--trusted-key", keys["pub"], "--require-signature"]) == 0
    assert "verified (trusted key)" in capsys.readouterr().out
    assert cli.main(["torch", "verify", str(out), "--trusted-key", keys["other_pub"]]) == 1
    assert "not a trusted key" in capsys.readouterr().err
    assert cli.main(["torch", "verify", str(exported["cli"]), "--trusted-key", str(keys["pubfile"])]) == 1
    assert "not signed" in capsys.readouterr().err
    assert cli.main(["torch", "inspect", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["signed_by"] == keys["pub"] and d["parts"]["megacache"]["parts"] == 1


# --------------------------------------------------------------------------
# house rules


@pytest.mark.timeout(60)
def test_import_pyruntime_and_its_cli_do_not_import_torch():
    code = ("import sys, pyruntime, pyruntime.cli as c; c.build_parser(); "
            "assert 'torch' not in sys.modules and 'cryptography' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))


@pytest.mark.timeout(120)
def test_verify_inspect_sign_and_keygen_need_no_torch(exported, tmp_path, keys):
    # a machine without torch (a registry's, a build farm's) still checks and signs files:
    # torch (and pyruntime.torch) made unimportable in the child
    code = ("import sys; sys.modules['torch'] = None; from pyruntime import cli; "
            "rc = [cli.main(a) for a in ("
            f"['torch', 'keygen', '--private', {str(tmp_path / 'k')!r}, '--public', {str(tmp_path / 'k.pub')!r}],"
            f"['torch', 'sign', {str(exported['cli'])!r}, '--key', {str(tmp_path / 'k')!r}, '-o', "
            f"{str(tmp_path / 's.prta')!r}],"
            f"['torch', 'verify', {str(tmp_path / 's.prta')!r}, '--trusted-key', {str(tmp_path / 'k.pub')!r}, "
            "'--require-signature'],"
            f"['torch', 'inspect', {str(tmp_path / 's.prta')!r}])]; "
            "assert not [m for m in sys.modules if m.startswith(('torch.', 'pyruntime.torch'))], 'torch imported'; "
            "print('rc', rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rc [0, 0, 0, 0]" in proc.stdout and "verified (trusted key)" in proc.stdout, proc.stdout
