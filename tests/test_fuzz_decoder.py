"""Fuzz the bundle decoder on both backends.

Property: for any input, ``decode`` either returns a bundle whose content
equals what the input's kernel table says (the original bundle's, unless the
fuzz rewrote the table and repacked it), or raises ``BundleFormatError`` with a one-line
message of bounded length, within a time and Python-memory budget that
grows with the input only (the unpacked bytes are bounded by 64x the file
in both backends, which the hostile-input tests check in a child under an
address-space limit).

Inputs: a real bundle with bits flipped, truncated, extended, or with its
header or kernel table replaced by arbitrary JSON that is repacked with
correct checksums and content digest, so the fuzz reaches the deep checks.
Profiles (``PYRUNTIME_HYPOTHESIS_PROFILE``) set the depth.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_bundles as H
from pyruntime import core as native
from pyruntime.bundle import format as bundle_format
from pyruntime.errors import BundleFormatError

BACKENDS = native.backends()
SECONDS = 2.0
MESSAGE = 1000

GOOD = H.small_bundle(3, 3, 300).to_bytes()
GOOD_CONTENT = [(k.kernel_hash, [(a.filename, bytes(a.payload)) for a in k.artifacts])
                for k in H.small_bundle(3, 3, 300).kernel_artifacts]
_header_raw, _kernels_raw, *_blobs = [c for _, c in __import__("pyruntime").packing.unpack(GOOD)]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
HEADER_KEYS = st.sampled_from(["format", "format_version", "pyruntime_version", "triton_version", "targets",
                               "content_digest", "blobs", "triton_abi", "extra"])


def _content(bundle):
    return [(k.kernel_hash, [(a.filename, bytes(a.payload)) for a in k.artifacts]) for k in bundle.kernel_artifacts]


@st.composite
def inputs(draw) -> tuple[bytes, list | None]:
    """An input and the content a successful decode must give (None: whatever
    the rewritten table describes, checked by a stable round trip)."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "header", "table", "kernel field"]))
    if kind == "flip":
        data = bytearray(GOOD)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(data), GOOD_CONTENT
    if kind == "truncate":
        return GOOD[:draw(st.integers(0, len(GOOD) - 1))], GOOD_CONTENT
    if kind == "extend":
        return GOOD + draw(st.binary(min_size=1, max_size=64)), GOOD_CONTENT
    if kind == "header":
        header = json.loads(_header_raw)
        header[draw(HEADER_KEYS)] = draw(JSON)
        return H.container(json.dumps(header).encode(), _kernels_raw, _blobs), GOOD_CONTENT
    table = json.loads(_kernels_raw)
    expected: list | None = None
    if kind == "kernel field":
        i = draw(st.integers(0, len(table) - 1))
        field = draw(st.sampled_from(["hash", "device", "target", "triton_version", "files", "extra"]))
        table[i][field] = value = draw(JSON)
        if field == "hash":
            # A repacked table may rename a kernel: a valid name decodes as that name.
            expected = [(value if j == i else h, files) for j, (h, files) in enumerate(GOOD_CONTENT)]
        elif field != "files":
            expected = GOOD_CONTENT
    else:
        table = draw(JSON)
    raw = json.dumps(table).encode()
    header = json.loads(_header_raw)
    header["content_digest"] = bundle_format.content_digest(raw, _blobs)
    return H.container(json.dumps(header).encode(), raw, _blobs), expected


@pytest.mark.parametrize("backend", BACKENDS, ids=[b.name for b in BACKENDS])
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=inputs())
def test_decode_refuses_in_bounds_or_round_trips(backend, case, monkeypatch):
    data, expected = case
    monkeypatch.setattr(native, "backend", backend)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        bundle = bundle_format.decode(data)
    except BundleFormatError as e:
        text = str(e)
        assert text and "\n" not in text and len(text) <= MESSAGE, text[:300]
    else:
        content = _content(bundle)
        if expected is not None:
            assert content == expected
        assert _content(bundle_format.decode(bundle_format.encode(bundle))) == content
    finally:
        took = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert took < SECONDS, took
    assert peak <= 64 * len(data) + (4 << 20), (peak, len(data))
