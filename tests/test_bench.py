"""Smoke tests of the bench runner (``python -m pyruntime.bench``).

They check that the runner produces well-formed results, not what the
figures are: speed claims live in bench/results/, never in timed tests.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from pyruntime.bench import _common as C
from pyruntime.bench import _report as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pyruntime.bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def framing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    js, md = out / "r.json", out / "r.md"
    proc = _bench("--suite", "framing", "--quick", "--rounds", "2", "--round-time", "0.02",
                  "--json", str(js), "--markdown", str(md), "--no-progress", "--no-plots",
                  "--date", "2026-11-23")
    return proc, js, md


@pytest.mark.timeout(120)
def test_framing_quick_json(framing_run):
    proc, js, md = framing_run
    assert proc.returncode == 0, proc.stderr
    res = json.loads(js.read_text())
    assert res["schema"] == C.SCHEMA_VERSION
    assert res["date"] == "2026-11-23"
    m = res["machine"]
    for key in ("cpu", "cores", "os", "python", "backend", "loadavg_start", "loadavg_end"):
        assert key in m, key
    for pkg in ("pyruntime", "triton", "torch", "lz4", "xxhash"):
        assert pkg in m["versions"], pkg
    assert list(res["suites"]) == ["framing"]
    suite = res["suites"]["framing"]
    assert suite["status"] == "ok"
    assert [x["id"] for x in suite["metrics"]] == ["frames_64B", "frames_1MiB"]
    for metric in suite["metrics"]:
        twin = metric["values"]["twin"]
        assert twin["median"] > 0 and len(twin["rounds"]) == 2
        assert twin["min"] <= twin["median"] <= twin["max"]
        c = metric["values"]["c"]
        if "median" in c:  # the C module is built: ours is C and compared with the twin
            assert metric["ours"] == "c" and metric["ratios"]["twin"] > 0
        else:
            assert c["status"] == "n/a"
    # the tables went to stdout, the markdown file has them too
    assert "64-byte frames through a pipe" in proc.stdout
    assert "machine:" in proc.stdout
    text = md.read_text()
    assert "## framing" in text and "| figure | impl |" in text


@pytest.mark.timeout(60)
def test_from_json_rerenders(framing_run, tmp_path):
    _, js, _ = framing_run
    md = tmp_path / "again.md"
    proc = _bench("--from-json", str(js), "--markdown", str(md), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "64-byte frames through a pipe" in proc.stdout
    assert "## framing" in md.read_text()


@pytest.mark.timeout(60)
def test_unknown_suite_is_a_clear_error():
    proc = _bench("--suite", "framing,nosuch")
    assert proc.returncode != 0
    assert "unknown suite 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_from_json_rejects_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    proc = _bench("--from-json", str(bad))
    assert proc.returncode != 0 and "not a bench result" in proc.stderr


def test_percentile_and_summarize():
    assert C.percentile([1, 2, 3, 4, 5], 50) == 3
    assert C.percentile([1, 2], 50) == 1.5
    assert C.percentile(list(range(101)), 99) == pytest.approx(99)
    s = C.summarize([10.0, 12.0, 11.0])
    assert s["median"] == 11.0 and s["spread"] == pytest.approx(2 / 11)
    lat = C.summarize([1.0, 3.0], samples=[1, 1, 1, 2, 100])
    assert lat["median"] == 1 and lat["p99"] > 90 and lat["n"] == 5


def test_ratio_direction_and_goals():
    fast = C.summarize([1.0])
    slow = C.summarize([4.0])
    t = C.metric("t", "time", "s", "lower", "ours", {"ours": fast, "peer": slow},
                 goal={"kind": "ratio", "peer": "peer", "min": 3, "text": ">= 3x"})
    assert t["ratios"]["peer"] == pytest.approx(4.0) and t["goal"]["met"] is True
    r = C.metric("r", "rate", "1/s", "higher", "ours", {"ours": fast, "peer": slow, "gone": C.na("x")},
                 goal={"kind": "min", "value": 2, "text": ">= 2/s"})
    assert r["ratios"] == {"peer": pytest.approx(0.25)} and r["goal"]["met"] is False
    rows = R.metric_rows(r)
    assert rows[2][1:3] == ("gone", "n/a")


def test_missing_module_suite_reports_na(monkeypatch):
    from pyruntime.bench import _bundle

    monkeypatch.setattr(_bundle, "MODULES", ("pyruntime.no_such_module",))
    res = _bundle.run(C.Settings.make(True))
    assert res["status"] == "n/a" and "module missing" in res["reason"]
    assert "n/a" in R.render_suite(res)


@pytest.mark.timeout(300)
def test_corpus_and_data_suites(tmp_path):
    """Build a tiny corpus (real cuda:90 compiles), then run the suites on it."""
    from pyruntime.bench import _corpus

    base = str(tmp_path / "corpus")
    info = _corpus.ensure(12, base)
    assert info["count"] == 12 and len(os.listdir(info["cache"])) == 12
    for k in info["kernels"]:
        d = os.path.join(info["cache"], k["dir"])
        # Triton's naming: the directory is the base32 form of the hash in the metadata
        assert base64.b32encode(bytes.fromhex(k["hash"])).decode().rstrip("=") == k["dir"]
        names = os.listdir(d)
        meta = json.loads(open(os.path.join(d, next(n for n in names if n.endswith(".json")
                                                    and not n.startswith("__grp__")))).read())
        assert meta["hash"] == k["hash"] and meta["target"]["arch"] == 90
        grp = json.loads(open(os.path.join(d, next(n for n in names if n.startswith("__grp__")))).read())
        assert all(os.path.dirname(p) == d for p in grp["child_paths"].values())
    js = tmp_path / "r.json"
    proc = _bench("--suite", "hashing,packing", "--quick", "--rounds", "1", "--round-time", "0.01",
                  "--corpus-dir", base, "--corpus-kernels", "12", "--json", str(js), "--no-progress",
                  timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(js.read_text())
    assert res["suites"]["hashing"]["extra"]["digests_agree"] is True
    for name in ("hashing", "packing"):
        assert res["suites"][name]["status"] == "ok", res["suites"][name]
    pk = {m["id"]: m for m in res["suites"]["packing"]["metrics"]}
    assert set(pk["pack"]["values"]) == {"c", "twin", "lz4.frame", "lz4.block"}
