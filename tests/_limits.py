"""Run a snippet in a child interpreter under an address-space limit.

Used by the decompression-bomb tests: a reader that allocated a declared
(bogus) size would hit MemoryError under the limit instead of raising the
documented error. The child proves the limit bites by failing a 1 GiB
allocation at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import resource
def _vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")
def limit_address_space(headroom):
    lim = _vm_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
def assert_limit_bites():
    try:
        bytearray(1 << 30)
    except MemoryError:
        return
    raise AssertionError("the address-space limit did not stop a 1 GiB allocation")
"""


def under_sanitizer() -> bool:
    return "asan" in os.environ.get("LD_PRELOAD", "")


def run_limited(code: str, backend_name: str, timeout: float = 60) -> str:
    """Run ``code`` (which calls limit_address_space) with the named backend
    forced; return its stdout, failing the test on a non-zero exit."""
    if under_sanitizer():
        pytest.skip("AddressSanitizer reserves terabytes of address space, so RLIMIT_AS cannot apply")
    env = dict(os.environ)
    env["PYRUNTIME_PURE_PYTHON"] = "1" if backend_name == "python" else "0"
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
