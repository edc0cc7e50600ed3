"""store suite: kernels for a fleet, on the 500-kernel corpus bundle.

- lazy restore through Triton's cache-manager hook
  (``TRITON_CACHE_MANAGER=pyruntime.triton_cache:BundleCacheManager``,
  ``PYRUNTIME_BUNDLES=<bundle>``), each run in a fresh interpreter with
  Triton and pyruntime imported before the clock: *ready* = the bundles
  opened (``triton_cache.bundle_set()``, the lookup index kept in the
  cache from an earlier process), *first lookup* = ``get_cache_manager``'s
  ``BundleCacheManager(key).get_group(...)`` of one kernel, which writes
  that kernel directory (atomically) and reads its group file back. Peer,
  in the same kind of fresh interpreter: what a launcher does today,
  ``TritonBundle.load`` + ``restore`` of the whole bundle before the first
  launch. The first open ever (which builds the lookup index) is shown too.
- ``store pull`` of the bundle from a local S3-compatible server (moto's
  server mode on 127.0.0.1; boto3 client made before the clock), against
  reading the same file from disk and restoring it (``TritonBundle.load`` +
  ``restore``), interleaved, each into a fresh empty cache; and the same
  pull from a local redis-server. Also each as a whole command in a fresh
  process (``store pull`` vs ``bundle restore``), imports included.
- 50 processes pulling the same bundle from the S3 server into one cache
  at once: how many succeed, and the wall time from the start signal.

The servers are started on free loopback ports and stopped at the end; a
server that cannot start (not installed) turns its rows into n/a with the
reason.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import _common as C
from . import _corpus
from . import _servers as S

MODULES = ("pyruntime.store", "pyruntime.triton_cache", "pyruntime.bundle.lazy")
MANAGER = "pyruntime.triton_cache:BundleCacheManager"
CONCURRENT = 50


# --------------------------------------------------------------------------
# children (fresh interpreters)


def lazy_child(bundle: str, cache: str, key: str, name: str, second: str, second_name: str) -> dict[str, float]:
    """Ready + first lookup through Triton's hook, in this fresh interpreter."""
    os.environ["TRITON_CACHE_DIR"] = cache
    os.environ["TRITON_CACHE_MANAGER"] = MANAGER
    os.environ["PYRUNTIME_BUNDLES"] = bundle
    from triton.runtime.cache import get_cache_manager  # noqa: F401  (imported before the clock)

    from .. import triton_cache

    t0 = time.perf_counter()
    bundles = triton_cache.bundle_set()
    t1 = time.perf_counter()
    group = triton_cache.BundleCacheManager(key).get_group(f"{name}.json")
    t2 = time.perf_counter()
    other = triton_cache.BundleCacheManager(second).get_group(f"{second_name}.json")
    t3 = time.perf_counter()
    for k, g in ((key, group), (second, other)):
        if not g or not all(os.path.isfile(p) for p in g.values()):
            raise RuntimeError(f"the lookup of {k} found no complete kernel: {g}")
    written = sorted(n for n in os.listdir(cache) if not n.startswith("."))
    if written != sorted({key, second}):
        raise RuntimeError(f"expected exactly 2 kernel directories, found {len(written)}")
    return {"ready": t1 - t0, "first_lookup": t2 - t1, "second_lookup": t3 - t2,
            "index_built": float(any(b.index_built for b in bundles.bundles)), "kernels": float(len(bundles.where))}


def eager_child(bundle: str, cache: str, kernels: int) -> dict[str, float]:
    """Today's start-up: load and restore the whole bundle."""
    from ..bundle import TritonBundle

    t0 = time.perf_counter()
    result = TritonBundle.load(bundle).restore(cache)
    t1 = time.perf_counter()
    if len(result.restored) != kernels:
        raise RuntimeError(f"restored {len(result.restored)} of {kernels} kernels")
    return {"load_restore": t1 - t0}


def pull_child(s3_url: str, redis_url: str | None, ref: str, bundle: str, scratch: str, kernels: int,
               rounds: int, round_time: float) -> dict[str, list[float]]:
    """Interleaved rounds: S3 pull, redis pull, file load+restore, each
    into a fresh empty cache; a round repeats until round_time."""
    from ..bundle import TritonBundle
    from ..store import open_store

    stores = {"s3": open_store(s3_url)}
    if redis_url:
        stores["redis"] = open_store(redis_url)
    for st in stores.values():  # connect and warm up (off the clock)
        st.resolve(ref)

    def once(impl: str) -> float:
        dest = tempfile.mkdtemp(prefix=f"{impl}-", dir=scratch)
        try:
            t0 = time.perf_counter()
            if impl == "file":
                result = TritonBundle.load(bundle).restore(dest)
            else:
                result = stores[impl].pull(ref, dest).restore
            elapsed = time.perf_counter() - t0
            assert result is not None
            if len(result.restored) != kernels:
                raise RuntimeError(f"{impl}: restored {len(result.restored)} of {kernels}")
            return elapsed
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    impls = ["file", *stores]
    for impl in impls:
        once(impl)  # warm-up, dropped
    out: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        reps: dict[str, list[float]] = {impl: [] for impl in impls}
        spent = 0.0
        while not reps["file"] or (spent < round_time and len(reps["file"]) < 20):
            for impl in impls:
                reps[impl].append(once(impl))
                spent += reps[impl][-1]
        for impl in impls:
            out[impl].append(statistics.median(reps[impl]))
    return out


# --------------------------------------------------------------------------
# the suite


def _kernel_name(cache: str, dirname: str) -> str:
    grp = next(n for n in os.listdir(os.path.join(cache, dirname)) if n.startswith("__grp__"))
    return grp[len("__grp__"):-len(".json")]


def _lazy_rows(settings: C.Settings, info: dict[str, Any], bundle: str, where: str, scratch: str,
               runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]], float]:
    """Fresh interpreters taking turns: lazy (ready, first lookup) and eager
    (load+restore). Returns the samples and the first-open time."""
    kernels = info["kernels"]
    cache = os.path.join(scratch, f"lazy-{where}")
    os.mkdir(cache)
    lazy: dict[str, list[float]] = {"ready": [], "first_lookup": [], "second_lookup": []}
    eager: dict[str, list[float]] = {"load_restore": []}
    first_open = float("nan")
    env = {"TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}
    for run in range(runs + 1):
        # each run looks up two kernels no earlier run wrote
        a, b = kernels[(2 * run) % len(kernels)]["dir"], kernels[(2 * run + 1) % len(kernels)]["dir"]
        for n in os.listdir(cache):
            if not n.startswith("."):
                shutil.rmtree(os.path.join(cache, n))
        res = C.run_child("pyruntime.bench._store:lazy_child",
                          {"bundle": bundle, "cache": cache, "key": a, "name": _kernel_name(info["cache"], a),
                           "second": b, "second_name": _kernel_name(info["cache"], b)},
                          timeout=settings.child_timeout, env=env)
        if run == 0:  # the first open ever: builds the lookup index, dropped from the figures
            if not res["index_built"]:
                raise RuntimeError("the first open found a lookup index already")
            first_open = res["ready"]
        else:
            if res["index_built"]:
                raise RuntimeError("a later open rebuilt the lookup index")
            for k in lazy:
                lazy[k].append(res[k])
        dest = os.path.join(scratch, f"eager-{where}-{run}")
        os.mkdir(dest)
        try:
            e = C.run_child("pyruntime.bench._store:eager_child",
                            {"bundle": bundle, "cache": dest, "kernels": len(kernels)},
                            timeout=settings.child_timeout, env=env)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if run > 0:
            eager["load_restore"].append(e["load_restore"])
    shutil.rmtree(cache, ignore_errors=True)
    return lazy, eager, first_open


def _cli_once(args: list[str], env: dict[str, str]) -> float:
    full = dict(os.environ)
    full.update(env)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True, env=full)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip()[-300:]}")
    return elapsed


def _concurrent(url: str, ref: str, scratch: str, env: dict[str, str], n: int,
                kernels: int) -> dict[str, Any]:
    """n processes pull ``ref`` into one empty cache at once."""
    cache = os.path.join(scratch, "concurrent-cache")
    go = os.path.join(scratch, "go")
    full = dict(os.environ)
    full.update(env)
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    full["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    procs = [subprocess.Popen([sys.executable, "-m", "pyruntime.bench._pull_worker", url, ref, cache, "1", go],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full,
                              start_new_session=True)
             for _ in range(n)]
    try:
        deadline = time.monotonic() + 300
        while sum(x.startswith("go.ready.") for x in os.listdir(scratch)) < n:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a pulling process did not start")
            time.sleep(0.01)
        t0 = time.perf_counter()
        open(go, "w").close()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                results.append({"error": err.strip()[-200:]})
                continue
            results += json.loads(out)["results"]
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ok = [r for r in results if "error" not in r]
    restored = sum(r["restored"] for r in ok)
    dirs = [d for d in os.listdir(cache) if not d.startswith(".")] if os.path.isdir(cache) else []
    errors = [r["error"] for r in results if "error" in r]
    return {"ok": len(ok), "wall": wall, "restored_once": restored == kernels, "dirs": len(dirs),
            "errors": errors[:3]}


def run(settings: C.Settings) -> dict[str, Any]:
    missing = C.first_missing(MODULES)
    if missing:
        return C.suite_na("store", f"n/a (module missing: {missing})")
    prog = C.progress_of(settings)
    info = _corpus.ensure(settings.corpus_kernels, settings.corpus_dir, prog)
    n = len(info["kernels"])
    disk = tempfile.mkdtemp(prefix="prt-bench-store-")
    mem = None
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        mem = tempfile.mkdtemp(prefix="prt-bench-store-", dir="/dev/shm")
    fast = mem or disk
    where = "tmpfs" if mem else "disk"
    servers: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    metrics: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"notes": []}
    runs = 3 if settings.quick else 9
    try:
        prog.step("store", f"bundling the {n}-kernel corpus")
        from ..bundle import collect_dir

        bundle = os.path.join(disk, "corpus.prtb")
        collect_dir(info["cache"]).save(bundle)
        size = os.path.getsize(bundle)
        tag = f"{n} kernels ({size / 1e6:.1f} MB bundle)"

        # 1. lazy restore through Triton's hook vs eager load+restore
        for place, scratch in ([(where, fast)] + ([("disk", disk)] if mem and not settings.quick else [])):
            prog.step("store", f"BundleCacheManager vs load+restore in fresh interpreters ({place})")
            local = os.path.join(scratch, f"bundle-{place}.prtb")
            shutil.copyfile(bundle, local)
            lazy, eager, first_open = _lazy_rows(settings, info, local, place, scratch, runs)
            lazy_only = {"BundleCacheManager": C.summarize(lazy["ready"])}
            metrics.append(C.metric(
                f"ready[{place}]", f"process ready: bundles opened (lookup index kept), {tag}, {place}", "s",
                "lower", "BundleCacheManager",
                {**lazy_only, "load+restore (today)": C.summarize(eager["load_restore"])},
                goal=None if place == "disk" and mem else {"kind": "max", "value": 0.005, "text": "at most 5 ms"}))
            metrics.append(C.metric(
                f"first_lookup[{place}]",
                f"first lookup of one kernel, writing it (get_group through Triton's hook), {tag}, {place}",
                "s", "lower", "BundleCacheManager", {"BundleCacheManager": C.summarize(lazy["first_lookup"])},
                goal=None if place == "disk" and mem else {"kind": "max", "value": 0.001, "text": "at most 1 ms"}))
            metrics.append(C.metric(
                f"second_lookup[{place}]", f"next lookup of another kernel, writing it, {place}", "s", "lower",
                "BundleCacheManager", {"BundleCacheManager": C.summarize(lazy["second_lookup"])}))
            metrics.append(C.metric(
                f"first_open[{place}]", f"the first open ever (builds and keeps the lookup index), {place}",
                "s", "lower", "BundleCacheManager", {"BundleCacheManager": C.summarize([first_open])}))

        # 2. store pull from local servers vs file load+restore
        workdir = os.path.join(disk, "servers")
        try:
            servers["s3"] = S.start_s3(workdir)
        except S.ServerUnavailable as e:
            reasons["s3"] = str(e)
        try:
            servers["redis"] = S.start_redis(workdir)
        except S.ServerUnavailable as e:
            reasons["redis"] = str(e)
        if "s3" in servers:
            env = S.s3_env(servers["s3"].url)
            S.make_bucket(servers["s3"].url, "bench")
            s3_url = "s3://bench/kernels"
            redis_url = servers["redis"].url if "redis" in servers else None
            push_env = dict(os.environ)
            push_env.update(env)
            for url in [s3_url] + ([redis_url] if redis_url else []):
                subprocess.run([sys.executable, "-m", "pyruntime", "store", "push", bundle, url, "--name",
                                "corpus:bench"], check=True, capture_output=True, env=push_env)
            prog.step("store", f"store pull (S3{', redis' if redis_url else ''}) vs load+restore, {where}")
            pulls = C.run_child("pyruntime.bench._store:pull_child",
                                {"s3_url": s3_url, "redis_url": redis_url, "ref": "corpus:bench",
                                 "bundle": bundle, "scratch": fast, "kernels": n, "rounds": settings.rounds,
                                 "round_time": settings.round_time},
                                timeout=settings.child_timeout, env=env)
            values = {"store pull (S3)": C.summarize(pulls["s3"]),
                      "read file + restore": C.summarize(pulls["file"])}
            if "redis" in pulls:
                values["store pull (redis)"] = C.summarize(pulls["redis"])
            metrics.append(C.metric(
                f"pull[{where}]", f"store pull from the local server into an empty cache vs the file from disk, "
                f"{tag}, cache on {where}", "s", "lower", "store pull (S3)", values,
                goal={"kind": "ratio", "peer": "read file + restore", "min": 1 / 1.5,
                      "text": "S3 pull within 1.5x of reading the file + restore"}))
            prog.step("store", "store pull vs bundle restore as whole commands (fresh processes)")
            cli_pull: list[float] = []
            cli_restore: list[float] = []
            for i in range(min(runs, 5)):
                for which in ("pull", "restore"):
                    dest = os.path.join(fast, f"cli-{which}-{i}")
                    try:
                        if which == "pull":
                            cli_pull.append(_cli_once(["store", "pull", s3_url, "corpus:bench", "--cache-dir", dest],
                                                      env))
                        else:
                            cli_restore.append(_cli_once(["bundle", "restore", bundle, "--cache-dir", dest], env))
                    finally:
                        shutil.rmtree(dest, ignore_errors=True)
            metrics.append(C.metric(
                f"pull_cli[{where}]", f"the whole command in a fresh process (imports, boto3 client), {tag}",
                "s", "lower", "store pull (S3)",
                {"store pull (S3)": C.summarize(cli_pull), "bundle restore (file)": C.summarize(cli_restore)}))

            # 3. many processes at once
            prog.step("store", f"{CONCURRENT} processes pulling the bundle at once")
            conc_dir = tempfile.mkdtemp(prefix="conc-", dir=fast)
            try:
                conc = _concurrent(s3_url, "corpus:bench", conc_dir, env, CONCURRENT, n)
            finally:
                shutil.rmtree(conc_dir, ignore_errors=True)
            metrics.append(C.metric(
                "concurrent_ok", f"{CONCURRENT} processes pulling the bundle from S3 into one cache at once: "
                "pulls that succeeded", "x", "higher", "store pull (S3)",
                {"store pull (S3)": C.summarize([float(conc["ok"])])},
                goal={"kind": "min", "value": CONCURRENT, "text": f"all {CONCURRENT} succeed"},
                label="pulls", note=None if not conc["errors"] else f"errors: {conc['errors']}"))
            metrics.append(C.metric(
                "concurrent_wall", f"{CONCURRENT} concurrent pulls: wall time from the start signal to the last "
                "one done", "s", "lower", "store pull (S3)", {"store pull (S3)": C.summarize([conc["wall"]])}))
            extra["concurrent"] = conc
            if not conc["restored_once"] or conc["dirs"] != n:
                extra["notes"].append(f"concurrent pulls: {conc['dirs']} kernel dirs, each restored once: "
                                      f"{conc['restored_once']}")
        else:
            for mid, title in (("pull", "store pull vs read file + restore"),
                               ("concurrent_ok", f"{CONCURRENT} concurrent pulls")):
                metrics.append(C.metric(mid, title, "s", "lower", "store pull (S3)",
                                        {"store pull (S3)": C.na(reasons["s3"])}))
        if "redis" in reasons:
            extra["notes"].append(f"redis rows skipped: {reasons['redis']}")
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(disk, ignore_errors=True)
        if mem:
            shutil.rmtree(mem, ignore_errors=True)
    return C.suite_result(
        "store", metrics=metrics,
        method=(f"corpus {info['cache']} bundled ({n} cuda:90 kernels, {info['triton']}); 'ready' and "
                f"'first lookup': {runs} fresh interpreters each for BundleCacheManager (Triton and pyruntime "
                "imported before the clock; the lookup index kept in the cache by a first process, whose "
                "open is shown as 'first open ever') and for load+restore, taking turns; pulls: one "
                f"interpreter, boto3/redis clients made and connected before the clock, {settings.rounds} "
                "rounds of S3 pull, redis pull and file load+restore interleaved, each into a fresh empty "
                f"cache; servers: moto's S3 server and redis-server on 127.0.0.1; {CONCURRENT} concurrent "
                "pullers: one process each, all started and connected first, then told to go at once"),
        extra=extra)
