"""packing suite: ``pack``/``unpack`` throughput on the files of the Triton
cache corpus, C vs twin vs ``lz4.frame`` vs ``lz4.block``.

``lz4.block`` with ``mode="default", store_size=False`` is one
``LZ4_compress_default`` / ``LZ4_decompress_safe`` call per file: the same
settings the C core uses, so it is the raw-liblz4 reference for the goal
"C within 10% of raw liblz4". ``lz4.frame`` (default settings, one frame per
file) is the off-the-shelf container. pack/unpack additionally checksum every
entry (XXH3-64), build and verify the index and copy names. Throughput is
raw (uncompressed) bytes per second in both directions.
"""

from __future__ import annotations

from typing import Any, Callable

from . import _common as C
from . import _corpus
from ._common import use_backend


def run(settings: C.Settings) -> dict[str, Any]:
    from .. import core, packing

    prog = C.progress_of(settings)
    info = _corpus.ensure(settings.corpus_kernels, settings.corpus_dir, prog)
    limit = 100 if settings.quick else None
    entries = _corpus.entries(info, limit)
    raw = sum(len(d) for _, d in entries)
    nkern = limit or info["count"]
    bes = {("twin" if b.name == "python" else b.name): b for b in core.backends()}

    packers: dict[str, tuple[Callable[[], Any], Callable[[Any], Any], Callable[[Any], int]]] = {}
    for name, be in bes.items():
        def pk(be: Any = be) -> bytes:
            with use_backend(be):
                return packing.pack(entries)

        def upk(blob: bytes, be: Any = be) -> Any:
            with use_backend(be):
                return packing.unpack(blob)
        packers[name] = (pk, upk, len)
    notes = []
    try:
        import lz4.block
        import lz4.frame

        def f_pack() -> list[bytes]:
            return [lz4.frame.compress(d) for _, d in entries]

        def f_unpack(blobs: list[bytes]) -> list[bytes]:
            return [lz4.frame.decompress(b) for b in blobs]

        def b_pack() -> list[bytes]:
            return [lz4.block.compress(d, mode="default", store_size=False) for _, d in entries]

        sizes = [len(d) for _, d in entries]

        def b_unpack(blobs: list[bytes]) -> list[bytes]:
            return [lz4.block.decompress(b, uncompressed_size=n) for b, n in zip(blobs, sizes)]

        def total(blobs: list[bytes]) -> int:
            return sum(len(b) for b in blobs)
        packers["lz4.frame"] = (f_pack, f_unpack, total)
        packers["lz4.block"] = (b_pack, b_unpack, total)
    except ImportError:
        notes.append("lz4 not installed: lz4.frame and lz4.block are n/a")

    # every implementation must round-trip before anything is timed
    blobs = {}
    for name, (pk, upk, size) in packers.items():
        blobs[name] = pk()
        out = upk(blobs[name])
        got = [d for _, d in out] if name in bes else out
        if got != [d for _, d in entries]:
            raise RuntimeError(f"{name}: unpack(pack(x)) != x on the corpus")

    pack_r: dict[str, list[float]] = {n: [] for n in packers}
    unpack_r: dict[str, list[float]] = {n: [] for n in packers}
    for r in range(settings.rounds):
        for name, (pk, upk, _size) in packers.items():
            prog.step("packing", f"pack/unpack {raw / 1e6:.0f} MB: {name} round {r + 1}/{settings.rounds}")
            pack_r[name].append(C.timed_rate(pk, settings.round_time, work=raw))
            blob = blobs[name]
            unpack_r[name].append(C.timed_rate(lambda upk=upk, blob=blob: upk(blob),
                                               settings.round_time, work=raw))
    impls = ["c", "twin", "lz4.frame", "lz4.block"]

    def vals(rs: dict[str, list[float]]) -> dict[str, Any]:
        out = {}
        for n in impls:
            if n in rs:
                out[n] = C.summarize(rs[n])
            else:
                out[n] = C.na("lz4 not installed" if n.startswith("lz4") else "C module not built")
        return out

    goal_p = {"kind": "ratio", "peer": "lz4.block", "min": 0.9,
              "text": "C within 10% of raw liblz4 (lz4.block), i.e. ratio >= 0.9"}
    metrics = [
        C.metric("pack", f"pack, {nkern} kernels ({raw / 1e6:.1f} MB raw)", "B/s", "higher", "c",
                 vals(pack_r), goal=goal_p),
        C.metric("unpack", f"unpack (verified), {nkern} kernels", "B/s", "higher", "c",
                 vals(unpack_r), goal=dict(goal_p)),
    ]
    sizes_v: dict[str, Any] = {}
    for n in impls:
        if n in packers:
            sz = float(packers[n][2](blobs[n]))
            sizes_v[n] = C.summarize([sz])
            sizes_v[n]["ratio_raw_to_packed"] = raw / sz
        else:
            sizes_v[n] = C.na("not installed")
    metrics.append(C.metric("packed_size", "output size", "B", "lower", "c", sizes_v,
                            note=f"raw {raw / 1e6:.1f} MB; compression "
                            + ", ".join(f"{n} {v['ratio_raw_to_packed']:.2f}x" for n, v in
                                        sizes_v.items() if "ratio_raw_to_packed" in v)))
    return C.suite_result(
        "packing", metrics=metrics,
        method=(f"input: every file of {nkern} corpus kernel directories ({len(entries)} entries, "
                f"{raw / 1e6:.1f} MB); pack/unpack through pyruntime.packing with each backend; "
                "lz4.frame.compress/decompress and lz4.block.compress(mode='default', "
                "store_size=False)/decompress per file; rates are raw bytes per second"),
        extra={"entries": len(entries), "raw_bytes": raw, "notes": notes})
