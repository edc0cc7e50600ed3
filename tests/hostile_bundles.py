"""Crafted bundle files for the hostile-input tests: well-formed containers
(right checksums and content digest) whose header, kernel table or blobs
say something a reader must refuse within bounded time, memory and message
length.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pyruntime import packing
from pyruntime.bundle import format as bundle_format
from pyruntime.bundle.model import TritonBundle, TritonKernelArtifact, TritonKernelArtifacts


def small_bundle(kernels: int = 3, files: int = 4, size: int = 600) -> TritonBundle:
    """A real bundle of synthetic kernels (no Triton needed)."""
    ks = []
    for i in range(kernels):
        arts = [TritonKernelArtifact(f"k{i}.json", json.dumps({"name": f"k{i}", "target": {"backend": "cuda", "arch": 90},
                                                                 "dir": "[REPLACE]/x"}).encode())]
        arts += [TritonKernelArtifact(f"k{i}.f{j}.ptx", bytes((i * 7 + j + n) % 251 for n in range(size)))
                 for j in range(files - 1)]
        arts.append(TritonKernelArtifact(f"k{i}.cubin", b"\x7fELF" + bytes(range(200))))
        ks.append(TritonKernelArtifacts(f"KERNEL{i:04d}", 0, arts, "cuda:90", "3.6.0"))
    return TritonBundle(ks, triton_version="3.6.0")


def header_of(kernels_json: bytes, blobs: list[bytes], **fields: Any) -> dict[str, Any]:
    header = {
        "format": bundle_format.FORMAT_NAME,
        "format_version": bundle_format.FORMAT_VERSION,
        "pyruntime_version": "0.1.0",
        "triton_version": "3.6.0",
        "targets": [],
        "content_digest": bundle_format.content_digest(kernels_json, blobs),
        "blobs": [len(b) for b in blobs],
    }
    header.update(fields)
    return header


def container(header: bytes | dict[str, Any], kernels_json: bytes, blobs: list[bytes]) -> bytes:
    """A pack container laid out as a bundle, every checksum right."""
    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode()
    entries = [("header.json", raw_header), ("kernels.json", kernels_json)]
    entries += [(f"blob.{i}", b) for i, b in enumerate(blobs)]
    return packing.pack(entries)


def with_table(kernels: list[Any] | bytes, blobs: list[bytes], **fields: Any) -> bytes:
    raw = kernels if isinstance(kernels, bytes) else json.dumps(kernels).encode()
    return container(header_of(raw, blobs, **fields), raw, blobs)


# -- the classes of the adversarial corpus --------------------------------

def many_header_keys(n: int = 200_000) -> bytes:
    """A header object of ``n`` keys and one of them twice (a duplicate
    check that compares every pair takes hours)."""
    parts = [f'"k{i}":0' for i in range(n)] + ['"k0":1']
    return container(("{" + ",".join(parts) + "}").encode(), b"[]", [])


def many_kernel_keys(n: int = 200_000) -> bytes:
    parts = [f'"k{i}":0' for i in range(n)] + ['"k0":1']
    table = ("[{" + ",".join(parts) + "}]").encode()
    return with_table(table, [])


def json_bomb(megabytes: int = 100, pad: int = 0) -> bytes:
    """A small file whose kernel table unpacks to ``megabytes`` MB of ``[],``
    (``pad`` bytes of incompressible blob make the file larger)."""
    table = b"[" + b"[]," * (megabytes * 1_000_000 // 3) + b"[]]"
    return with_table(table, [os.urandom(pad)] if pad else [])


def many_targets(n: int = 10_000_000) -> bytes:
    raw = b"[]"
    header = json.dumps(header_of(raw, [])).encode()
    header = header.replace(b'"targets": []', b'"targets": [' + b'"cuda:90",' * (n - 1) + b'"cuda:90"]')
    return container(header, raw, [])


def targets_under_size_limit(n: int = 50_000) -> bytes:
    raw = b"[]"
    return container(header_of(raw, [], targets=["x"] * n), raw, [])


def lz4_bomb(megabytes: int = 1500) -> bytes:
    """One blob of zeros that declares ``megabytes`` MB: LZ4 packs it ~255x."""
    blob = bytes(megabytes << 20)
    table = [{"hash": "K", "device": 0, "target": None, "triton_version": None,
              "files": [["k.cubin", 0, 0, len(blob)]]}]
    return with_table(table, [blob])


def long_values(length: int = 50_000_000) -> dict[str, bytes]:
    """Bundles whose offending value is ``length`` characters long."""
    long = "A" * length
    blob = b"x"
    table = [{"hash": long, "device": 0, "target": None, "triton_version": None, "files": [["f", 0, 0, 1]]}]
    out = {"hash": with_table(table, [blob])}
    table = [{"hash": "K", "device": 0, "target": None, "triton_version": None, "files": [[long, 0, 0, 1]]}]
    out["file name"] = with_table(table, [blob])
    table = [{"hash": "K", "device": 0, "target": long, "triton_version": None, "files": [["f", 0, 0, 1]]}]
    out["target"] = with_table(table, [blob])
    raw = b"[]"
    out["header key"] = container(header_of(raw, [], **{long: 1}), raw, [])
    out["format"] = container(header_of(raw, [], format=long), raw, [])
    out["many unexpected keys"] = container(header_of(raw, [], **{f"x{i}": 1 for i in range(100_000)}), raw, [])
    out["huge integer"] = with_table(
        b'[{"hash":"K","device":' + b"9" * 4000 + b',"target":null,"triton_version":null,"files":[]}]', [])
    return out


def sentinel_bomb(count: int = 2_000_000) -> bytes:
    """A kernel whose .json file is ``count`` [REPLACE] sentinels: ~9 bytes
    each in the bundle, a whole path each once restored (an incompressible
    second file makes the bundle large enough to pass the 64x rule)."""
    body = b"[REPLACE]" * count
    pad = os.urandom(len(body) // 50)
    table = [{"hash": "KSENTINEL", "device": 0, "target": None, "triton_version": None,
              "files": [["k.json", 0, 0, len(body)], ["pad.bin", 0, len(body), len(pad)]]}]
    return with_table(table, [body + pad])
