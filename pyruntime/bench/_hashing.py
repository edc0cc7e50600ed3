"""hashing suite: ``hash_dir`` over the Triton cache corpus (C vs twin) and
``hash_bytes`` throughput (C vs twin vs the xxhash package called directly).

Files are read from a warm page cache (the corpus was just built or read),
so ``hash_dir`` measures the walk, the syscalls and XXH3, not the disk.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from . import _common as C
from . import _corpus


def _per_call(fn: Callable[[], Any], round_time: float) -> float:
    """Seconds per call, averaged over one round."""
    return 1.0 / C.timed_rate(fn, round_time)


def run(settings: C.Settings) -> dict[str, Any]:
    from .. import core

    prog = C.progress_of(settings)
    info = _corpus.ensure(settings.corpus_kernels, settings.corpus_dir, prog)
    cache = info["cache"]
    bes = {("twin" if b.name == "python" else b.name): b for b in core.backends()}
    impls = ["c", "twin"]
    metrics = []

    # -- hash_dir over the whole cache ---------------------------------
    digests = {}
    for name, be in bes.items():
        digests[name] = be.hash_dir(cache)  # warm-up, and the backends must agree
    agree = len(set(digests.values())) == 1
    rounds: dict[str, list[float]] = {n: [] for n in bes}
    for r in range(settings.rounds):
        for name, be in bes.items():
            prog.step("hashing", f"hash_dir({info['count']} kernel dirs): {name} round "
                      f"{r + 1}/{settings.rounds}")
            rounds[name].append(_per_call(lambda be=be: be.hash_dir(cache), settings.round_time))
    values = {n: (C.summarize(rounds[n]) if n in bes else C.na("C module not built")) for n in impls}
    metrics.append(C.metric(
        "hash_dir_cache", f"hash_dir, {info['count']} kernel dirs ({info['bytes'] / 1e6:.0f} MB)",
        "s", "lower", "c", values,
        goal={"kind": "ratio", "peer": "twin", "min": 5.0, "text": "C at least 5x the twin"},
        note=None if agree else "the backends' digests DIFFER"))
    # as a rate too, for the JSON readers who want MB/s
    for n in bes:
        values[n]["bytes_per_s"] = info["bytes"] / values[n]["median"]

    # -- hash_dir of single kernel directories -----------------------------
    dirs = [os.path.join(cache, k["dir"]) for k in info["kernels"][:64]]
    rounds = {n: [] for n in bes}
    for r in range(settings.rounds):
        for name, be in bes.items():
            prog.step("hashing", f"hash_dir(one kernel dir): {name} round {r + 1}/{settings.rounds}")
            def each(be: Any = be) -> None:
                for d in dirs:
                    be.hash_dir(d)
            rounds[name].append(C.timed_rate(each, settings.round_time, work=len(dirs)))
    values = {n: (C.summarize(rounds[n]) if n in bes else C.na("C module not built")) for n in impls}
    metrics.append(C.metric("hash_dir_kernel", "hash_dir of one kernel dir", "1/s", "higher", "c",
                            values, label="dirs/s"))

    # -- hash_bytes ------------------------------------------------------------
    try:
        import xxhash

        direct: Callable[[Any], Any] | None = xxhash.xxh3_128_hexdigest
    except (ImportError, AttributeError):
        direct = None
    fns: dict[str, Callable[[Any], Any] | None] = {n: bes[n].hash_bytes for n in bes}
    fns["xxhash"] = direct
    for size, mid, title in ((16 << 20, "hash_bytes_16MiB", "hash_bytes, 16 MiB"),
                             (4096, "hash_bytes_4KiB", "hash_bytes, 4 KiB")):
        data = os.urandom(size)
        rounds = {n: [] for n, f in fns.items() if f is not None}
        for r in range(settings.rounds):
            for name, f in fns.items():
                if f is None:
                    continue
                prog.step("hashing", f"{title}: {name} round {r + 1}/{settings.rounds}")
                reps = max(1, (1 << 20) // size)  # batch small calls to keep timer overhead out
                def go(f: Callable[[Any], Any] = f, reps: int = reps) -> None:
                    for _ in range(reps):
                        f(data)
                rounds[name].append(C.timed_rate(go, settings.round_time, work=reps * size))
        values = {}
        for n in ("c", "twin", "xxhash"):
            if n in rounds:
                values[n] = C.summarize(rounds[n])
            else:
                values[n] = C.na("xxhash not installed" if n == "xxhash" else "C module not built")
        metrics.append(C.metric(mid, title, "B/s", "higher", "c", values))

    return C.suite_result(
        "hashing", metrics=metrics,
        method=(f"corpus: {info['count']} Triton kernel directories for {info['target']} "
                f"({info['files']} files, {info['bytes'] / 1e6:.1f} MB, warm page cache) at "
                f"{cache}; hash_dir is the public API of each backend; xxhash = "
                "xxhash.xxh3_128_hexdigest called directly (what the twin wraps)"),
        extra={"corpus": {k: info[k] for k in ("path", "count", "files", "bytes", "triton", "target")},
               "digests_agree": agree})
