"""pyruntime.store and ``python -m pyruntime store``: bundles pushed to and
pulled from a directory, a real redis-server and a real S3-compatible
server (moto's server mode) on loopback ports, with the faults a fleet
meets: a server killed mid-pull, a connection refused, a cut or changed
object, and two hundred pulls of one bundle into one cache at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import bundle_kernels
import pyruntime
from pyruntime.bench import _servers as S
from pyruntime.store import (
    StoreError,
    StoreNotFoundError,
    StoreObjectError,
    StoreUnavailableError,
    open_store,
    parse_name,
    parse_ref,
    pull_to_file,
    split_ref,
)
from servers import (  # noqa: F401  (fixtures)
    PausingProxy,
    RawObjects,
    assert_kernels,
    kernel_dirs,
    new_bucket,
    redis_server,
    s3_env,
    s3_server,
    unique_prefix,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ["file", "redis", "s3"]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """Two real bundles (cuda:90 kernels compiled by Triton): all four
    sample kernels, and the first two alone."""
    cache_dir, hashes = bundle_kernels.shared_cache(tmp_path_factory)
    out = tmp_path_factory.mktemp("bundles")
    full, part = str(out / "full.prtb"), str(out / "part.prtb")
    pyruntime.collect_dir(cache_dir).save(full)
    pyruntime.collect_dir(cache_dir, sorted(hashes)[:2]).save(part)
    return {"full": full, "part": part, "hashes": sorted(hashes)}


@pytest.fixture(params=BACKENDS)
def store_case(request, tmp_path):
    """(store URL, raw access to its objects) for each kind of store."""
    kind = request.param
    if kind == "file":
        root = str(tmp_path / "store")
        return f"file://{root}", RawObjects("file", root=root)
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        prefix = unique_prefix()
        return f"{server.url}?prefix={prefix}", RawObjects("redis", url=server.url, prefix=prefix)
    env = request.getfixturevalue("s3_env")
    bucket = new_bucket(env["AWS_ENDPOINT_URL"])
    return f"s3://{bucket}/kernels", RawObjects("s3", endpoint=env["AWS_ENDPOINT_URL"], bucket=bucket,
                                                 prefix="kernels")


def digest_of(path: str) -> str:
    return pyruntime.TritonBundle.load(path).content_digest


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=timeout)


# --------------------------------------------------------------------------
# references and URLs


def test_references_parse_and_hostile_ones_are_refused_in_one_short_line():
    assert parse_name("llama") == ("llama", "latest")
    assert parse_name("team/llama-70b:v3.1") == ("team/llama-70b", "v3.1")
    assert str(parse_ref("0123456789abcdef0123456789abcdef")) == "0123456789abcdef0123456789abcdef"
    assert parse_ref("m:t").name == "m"
    hostile = "../" * 50 + "\n" + "x" * 500
    for bad in ("", ":", "a:", "../x", "a//b", ".hidden", "a b", "a:-t", hostile, "0123456789abcdef0123456789abcdef:v"):
        with pytest.raises(ValueError) as e:
            parse_ref(bad)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 250, msg
    assert split_ref("s3://b/p#m:v1") == ("s3://b/p", "m:v1")
    with pytest.raises(ValueError, match="names a store but no bundle"):
        split_ref("s3://b/p")
    for bad in ("http://x/y", "/plain/path", "ftp://a", "file://host/x", "s3:///nobucket"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_import_pyruntime_and_the_store_import_no_client_library():
    code = ("import sys, pyruntime, pyruntime.store, pyruntime._cli_store; "
            "pyruntime.store.open_store('file:///tmp/x'); "
            "print(sorted(m for m in ('boto3', 'botocore', 'redis', 'triton', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pyruntime"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert not [l for l in out.stderr.splitlines() if any(m in l for m in ("boto", "redis", "triton", "torch"))]


# --------------------------------------------------------------------------
# every kind of store


@pytest.mark.timeout(60)
def test_push_ls_pull_round_trip(store_case, bundles, tmp_path):
    url, raw = store_case
    digest = digest_of(bundles["full"])
    with open_store(url) as store:
        assert store.push(bundles["full"], name="model:v1") == digest
        assert store.push(bundles["full"], name="model") == digest  # stored once, a second name
        part = store.push(bundles["part"])
        listing = store.ls()
        assert listing.refs == {"model:v1": digest, "model:latest": digest}
        size = os.path.getsize(bundles["full"])
        assert listing.blobs == {digest: size, part: os.path.getsize(bundles["part"])}
        assert raw.get(f"blobs/{digest}.prtb") == open(bundles["full"], "rb").read()
        cache = str(tmp_path / "cache")
        r = store.pull("model:v1", cache)
        assert (r.digest, r.size, sorted(r.restored), r.existing) == (digest, size, bundles["hashes"], [])
        assert_kernels(cache, bundles["full"])
        again = store.pull(digest, cache)  # by digest; everything is there
        assert again.restored == [] and sorted(again.existing) == bundles["hashes"]
        with pytest.raises(StoreNotFoundError, match="no bundle named model:v2"):
            store.pull("model:v2", cache)
        with pytest.raises(StoreNotFoundError, match="no bundle 0{32}"):
            store.pull("0" * 32, cache)


@pytest.mark.timeout(60)
def test_an_invalid_bundle_is_never_pushed(store_case, bundles, tmp_path):
    url, _ = store_case
    data = bytearray(open(bundles["full"], "rb").read())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 7] ^= 0xFF
    bad = tmp_path / "bad.prtb"
    bad.write_bytes(bytes(data))
    with open_store(url) as store:
        part = store.push(bundles["part"])
        with pytest.raises(pyruntime.BundleFormatError):
            store.push(str(bad), name="bad:v1")
        listing = store.ls()
        assert listing.refs == {} and list(listing.blobs) == [part]


@pytest.mark.timeout(60)
def test_a_cut_object_is_refused_and_nothing_is_written(store_case, bundles, tmp_path):
    url, raw = store_case
    with open_store(url) as store:
        digest = store.push(bundles["full"], name="m:v1")
        key = f"blobs/{digest}.prtb"
        whole = raw.get(key)
        for keep in (len(whole) - 1, len(whole) // 2, 20, 0):
            raw.put(key, whole[:keep])
            cache = tmp_path / f"cache{keep}"
            with pytest.raises(StoreObjectError) as e:
                store.pull("m:v1", str(cache))
            msg = str(e.value)
            assert "\n" not in msg and store.url in msg and key in msg and "truncated" in msg, msg
            assert kernel_dirs(str(cache)) == []


@pytest.mark.timeout(60)
def test_a_changed_object_gives_an_error_or_the_very_same_kernels(store_case, bundles, tmp_path):
    """A byte flipped in the stored object, at many places: the header,
    the index (checksummed), the JSON entries, inside the blobs. Each pull
    either fails naming the problem, with nothing written, or (when LZ4
    decodes the changed block to the same bytes, which it may) restores
    exactly the bundle's kernels."""
    url, raw = store_case
    with open_store(url) as store:
        digest = store.push(bundles["full"], name="m:v1")
        key = f"blobs/{digest}.prtb"
        whole = raw.get(key)
        offsets = sorted({0, 5, 12, 30, 40, 100, 300} | {len(whole) * i // 23 for i in range(1, 23)}
                         | {len(whole) - 1})
        errors = 0
        for off in offsets:
            raw.put(key, whole)
            raw.flip(key, off)
            assert raw.get(key) != whole
            cache = str(tmp_path / f"c{off}")
            try:
                store.pull("m:v1", cache)
            except StoreObjectError as e:
                errors += 1
                assert "\n" not in str(e) and key in str(e)
                assert kernel_dirs(cache) == [], off
            else:
                assert_kernels(cache, bundles["full"])
        assert errors >= len(offsets) - 3, (errors, len(offsets))


@pytest.mark.timeout(60)
def test_a_foreign_bundle_under_a_digest_is_refused(store_case, bundles, tmp_path):
    url, raw = store_case
    with open_store(url) as store:
        full = store.push(bundles["full"], name="m:v1")
        raw.put(f"blobs/{full}.prtb", open(bundles["part"], "rb").read())  # a valid bundle, but another one
        with pytest.raises(StoreObjectError, match=f"holds bundle {digest_of(bundles['part'])}, not {full}"):
            store.pull("m:v1", str(tmp_path / "c"))
        raw.put("refs/m/v2", b"not a digest at all\n" * 3)
        with pytest.raises(StoreObjectError, match="reference m:v2 holds"):
            store.pull("m:v2", str(tmp_path / "c"))
        assert kernel_dirs(str(tmp_path / "c")) == []


@pytest.mark.timeout(60)
def test_the_size_limit_is_checked_before_the_download(store_case, bundles, tmp_path, monkeypatch):
    url, _ = store_case
    with open_store(url) as store:
        store.push(bundles["full"], name="m:v1")
        monkeypatch.setenv("PYRUNTIME_STORE_MAX_BYTES", "1000")
        with pytest.raises(StoreObjectError, match="over the 1000-byte limit"):
            store.pull("m:v1", str(tmp_path / "c"))


@pytest.mark.timeout(60)
def test_pull_to_file_keeps_a_verified_content_addressed_copy(store_case, bundles, tmp_path):
    url, _ = store_case
    with open_store(url) as store:
        digest = store.push(bundles["full"], name="m:v1")
    local = pull_to_file(url, "m:v1", tmp_path / "b")
    assert local == str(tmp_path / "b" / f"{digest}.prtb")
    assert open(local, "rb").read() == open(bundles["full"], "rb").read()
    # a digest whose file is there needs no store at all
    assert pull_to_file("redis://127.0.0.1:1/0", digest, tmp_path / "b") == local
    assert [n for n in os.listdir(tmp_path / "b") if ".tmp." in n] == []


# --------------------------------------------------------------------------
# servers that fail


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["redis", "s3"])
def test_a_refused_connection_is_a_quick_one_line_error(kind, tmp_path, monkeypatch):
    port = S.free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0" if kind == "redis" else "s3://bucket/p"
    if kind == "s3":
        for k, v in S.s3_env(f"http://127.0.0.1:{port}").items():
            monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError) as e:
        open_store(url).pull("m:v1", str(tmp_path / "c"))
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "refused" in msg.lower(), msg
    assert kernel_dirs(str(tmp_path / "c")) == []
    r = cli("store", "pull", url, "m:v1", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pyruntime: error: store "), r.stderr
    r = cli("store", "pull", url, "m:v1", "--cache-dir", str(tmp_path / "c"), "--on-error", "warn")
    assert r.returncode == 0 and "warning" in r.stderr and "Triton will compile" in r.stderr, r.stderr
    r = cli("store", "pull", url, "m:v1", "--cache-dir", str(tmp_path / "c"),
            env={"PYRUNTIME_STORE_ON_ERROR": "warn"})
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["redis", "s3"])
def test_the_server_killed_mid_pull_gives_an_error_and_no_partial_kernel(kind, bundles, tmp_path, monkeypatch):
    """A server of its own, reached through a proxy that holds the bundle's
    bytes half-way; the server is SIGKILLed there, then the transfer is
    cut. The pull fails with one line; the cache holds nothing."""
    start = S.start_redis if kind == "redis" else S.start_s3
    try:
        server = start(str(tmp_path / "server"))
    except S.ServerUnavailable as e:
        pytest.skip(str(e))
    try:
        size = os.path.getsize(bundles["full"])
        if kind == "redis":
            direct = server.url
        else:
            for k, v in S.s3_env(server.url).items():
                monkeypatch.setenv(k, v)
            direct = f"s3://{new_bucket(server.url)}/k"
        with open_store(direct) as store:
            store.push(bundles["full"], name="m:v1")
        proxy = PausingProxy(server.port, limit=size // 2 + 200)  # the reference passes, half the bundle
        if kind == "redis":
            url = f"redis://127.0.0.1:{proxy.port}/0"
        else:
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
            url = direct
        import threading

        caught: list[BaseException] = []
        cache = str(tmp_path / "cache")

        def pull() -> None:
            try:
                open_store(url).pull("m:v1", cache)
            except BaseException as e:  # noqa: BLE001 - checked below
                caught.append(e)

        t = threading.Thread(target=pull)
        t.start()
        assert proxy.paused.wait(30), "the transfer never reached the proxy's limit"
        server.kill()
        proxy.release()
        t.join(60)
        assert not t.is_alive()
        assert len(caught) == 1 and isinstance(caught[0], StoreUnavailableError), caught
        msg = str(caught[0])
        assert "\n" not in msg and "blobs/" in msg, msg
        assert kernel_dirs(cache) == []
    finally:
        server.stop()


# --------------------------------------------------------------------------
# many pulls at once


def _pull_at_once(url: str, ref: str, cache: str, procs: int, threads: int, tmp_path) -> list[dict]:
    go = str(tmp_path / "go")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    children = [subprocess.Popen([sys.executable, "-m", "pyruntime.bench._pull_worker", url, ref, cache,
                                  str(threads), go], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                 cwd=ROOT, text=True)
                for _ in range(procs)]
    # every child imports and opens its store, says so, then waits for the go file
    deadline = time.monotonic() + 60
    while sum(n.startswith("go.ready.") for n in os.listdir(tmp_path)) < procs:
        assert time.monotonic() < deadline and all(c.poll() is None for c in children), "a puller did not start"
        time.sleep(0.01)
    open(go, "w").close()
    results = []
    for c in children:
        out, err = c.communicate(timeout=90)
        assert c.returncode == 0, err[-2000:]
        results += json.loads(out)["results"]
    return results


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,procs,threads", [("redis", 20, 10), ("s3", 20, 10), ("file", 20, 10)])
def test_two_hundred_pulls_of_one_bundle_into_one_cache(kind, procs, threads, bundles, tmp_path, request):
    """Processes x threads pull one bundle into one empty cache at once:
    every pull succeeds, each kernel is restored by exactly one of them
    (the others find it in place), and the cache holds every kernel whole."""
    if kind == "file":
        url = f"file://{tmp_path / 'store'}"
    elif kind == "redis":
        url = f"{request.getfixturevalue('redis_server').url}?prefix={unique_prefix()}"
    else:
        env = request.getfixturevalue("s3_env")
        url = f"s3://{new_bucket(env['AWS_ENDPOINT_URL'])}/k"
    with open_store(url) as store:
        store.push(bundles["full"], name="m:v1")
    cache = str(tmp_path / "cache")
    results = _pull_at_once(url, "m:v1", cache, procs, threads, tmp_path)
    assert len(results) == procs * threads
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[:3]
    assert sum(r["restored"] for r in results) == len(bundles["hashes"])
    assert all(r["restored"] + r["existing"] == len(bundles["hashes"]) for r in results)
    assert_kernels(cache, bundles["full"])


# --------------------------------------------------------------------------
# the command line


@pytest.mark.timeout(120)
def test_cli_push_pull_ls(store_case, bundles, tmp_path):
    url, _ = store_case
    digest = digest_of(bundles["full"])
    r = cli("store", "push", bundles["full"], url, "--name", "model:v7")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{digest}\n" and f"model:v7 -> {digest}" in r.stderr
    r = cli("store", "ls", url)
    assert r.returncode == 0 and f"model:v7" in r.stdout and digest in r.stdout, r.stderr
    listing = json.loads(cli("store", "ls", url, "--json").stdout)
    assert listing["refs"] == {"model:v7": digest}
    cache = str(tmp_path / "cache")
    r = cli("store", "pull", url, "model:v7", "--cache-dir", cache)
    assert r.returncode == 0, r.stderr
    assert f"restored {len(bundles['hashes'])} kernels" in r.stdout
    assert_kernels(cache, bundles["full"])
    for args, text in (
        (("store", "pull", url, "model:v8", "--cache-dir", cache), "no bundle named model:v8"),
        (("store", "pull", url, "../../etc", "--cache-dir", cache), "bundle name"),
        (("store", "push", str(tmp_path / "missing.prtb"), url), "no such file"),
        (("store", "push", bundles["full"], url, "--name", "a b"), "--name"),
        (("store", "ls", "ftp://x/" + "y" * 300), "is not a store URL"),
    ):
        r = cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and text in r.stderr, (args, r.stderr)
        assert len(r.stderr) < 300


def test_the_bench_suite_reports_na_when_its_modules_are_missing(monkeypatch):
    from pyruntime.bench import _common as C
    from pyruntime.bench import _report as R
    from pyruntime.bench import _store

    monkeypatch.setattr(_store, "MODULES", ("pyruntime.no_such_module",))
    res = _store.run(C.Settings.make(True))
    assert res["status"] == "n/a" and "module missing" in res["reason"]
    assert "n/a" in R.render_suite(res)
