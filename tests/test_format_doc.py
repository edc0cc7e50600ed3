"""The vectors in docs/FORMAT.md hold on both backends.

The document is the reference a reimplementation starts from, so its
examples are read from the file itself rather than copied here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import xxhash

from pyruntime import core as native

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"
BACKENDS = native.backends()


def sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def hex_blocks(section: str) -> list[bytes]:
    """Fenced blocks that are hex dumps, as bytes: on each line, the hex
    before a wide gap (what follows is a comment). Other blocks are skipped."""
    out = []
    for block in re.findall(r"```\n(.*?)```", section, flags=re.S):
        hexes = "".join(re.split(r"\s{3,}", line.strip())[0].replace(" ", "") for line in block.splitlines())
        if re.fullmatch(r"([0-9a-f]{2})+", hexes):
            out.append(bytes.fromhex(hexes))
    return out


def test_the_document_has_its_sections():
    assert {"Frame", "Digests", "Pack container", "Bundle file"} <= set(sections())


def frame_wire(backend, kind, job_id, payload) -> bytes:
    r, w = os.pipe()
    try:
        backend.write_frame(w, kind, job_id, payload)
        os.close(w)
        w = -1
        return os.read(r, 1 << 16)
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def test_frame_vectors(backend):
    hi, empty = hex_blocks(sections()["Frame"])
    assert frame_wire(backend, 1, 2, b"hi") == hi
    assert frame_wire(backend, 0, 0, b"") == empty
    r, w = os.pipe()
    os.write(w, hi + empty)
    os.close(w)
    assert backend.read_frame(r, 10) == (1, 2, bytearray(b"hi"))
    assert backend.read_frame(r, 10) == (0, 0, bytearray())
    os.close(r)


def test_digest_vectors(backend, tmp_path):
    text = sections()["Digests"]
    (stream,) = hex_blocks(text)
    want = re.search(r"its digest is `([0-9a-f]{32})`", text).group(1)
    empty = re.search(r"An empty directory: `([0-9a-f]{32})`", text).group(1)
    assert xxhash.xxh3_128_hexdigest(stream) == want
    assert xxhash.xxh3_128_hexdigest(b"PRTH\x01") == empty == backend.hash_dir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1")
    (tmp_path / "a.b").write_bytes(b"")
    (tmp_path / "l").symlink_to("a/x")
    (tmp_path / "lock").write_bytes(b"4242")
    (tmp_path / "tmp.x").mkdir()
    (tmp_path / "tmp.x" / "y").write_bytes(b"junk")
    assert backend.hash_dir(tmp_path) == want
    assert backend.hash_bytes(b"") in text


def test_pack_vectors(backend):
    empty, two = hex_blocks(sections()["Pack container"])
    assert backend.pack([]) == empty
    assert backend.pack([(b"a", b"hello"), (b"z", bytes(64))]) == two
    assert len(two) == 106
    assert backend.unpack(two, 1 << 30, 1 << 32) == [(b"a", b"hello"), (b"z", bytes(64))]
