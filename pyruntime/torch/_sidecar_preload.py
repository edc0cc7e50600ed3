"""Imported by the sidecar of an Inductor pool before it forks workers.

It does in the sidecar what Inductor's own compile-worker sidecar does at
start-up, so every forked worker inherits it for free: import torch,
Inductor's compile machinery and Triton; adopt the caller's ``torch_key``
(hashing torch's sources again would take seconds); point Triton at torch's
ptxas; cache device properties and the Triton key. Importing this module
anywhere else would do the same, so only the sidecar imports it.
"""

from __future__ import annotations

import base64
import os

os.environ.setdefault("TORCH_WARM_POOL", "0")  # never a pool inside the pool

import torch  # noqa: E402,F401
from torch._inductor import async_compile as _async_compile  # noqa: E402
from torch._inductor.codecache import torch_key as _torch_key  # noqa: E402

_key = os.environ.get("PYRUNTIME_TORCH_KEY")
if _key and hasattr(_torch_key, "set"):
    _torch_key.set(base64.b64decode(_key.encode("ascii")))

try:
    from torch._inductor.runtime.compile_tasks import _set_triton_ptxas_path

    _set_triton_ptxas_path()
except ImportError:  # older torch: nothing to set
    pass

try:
    import triton  # noqa: F401
except ImportError:
    pass

_async_compile.pre_fork_setup()
