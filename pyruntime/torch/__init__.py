"""pyruntime for PyTorch Inductor (the optional ``torch`` extra).

This is the only part of pyruntime that imports torch; ``import pyruntime``
never does. Three integrations:

1. :func:`use_pyruntime_pool` makes Inductor's async compile (its Triton
   compile-worker pool) use a pyruntime :class:`~pyruntime.pool.SubprocPool`;
   ``restore()`` / the ``with`` block puts Inductor's own pool back.
2. :func:`from_inductor_bundle` / :func:`to_inductor_bundle` convert between
   Inductor's ``TritonBundle`` and pyruntime bundles;
   :func:`record_triton_kernels` (or :func:`export_triton_cache`) exports the
   Triton kernels of a torch.compile run to a bundle file, and
   :func:`restore_triton_bundle` puts them into the cache before the next run.
3. :func:`use_pyruntime_fx_subprocess` runs Inductor's subprocess FX-compile
   mode on pyruntime's out-of-process child
   (:func:`pyruntime.outofproc.run_out_of_process`), which clears its caches
   only when the parent's cache generation moved.

Importing this package links Inductor's ``clear_caches()`` to
:func:`pyruntime.outofproc.bump_cache_generation`.
"""

from __future__ import annotations

from .bundles import (
    KernelRecorder,
    export_triton_cache,
    from_inductor_bundle,
    inductor_triton_cache_dir,
    record_triton_kernels,
    restore_triton_bundle,
    to_inductor_bundle,
)
from .fx import FxSubprocessPatch, use_pyruntime_fx_subprocess
from .pool import (
    InductorPool,
    InductorPoolPatch,
    active_patch,
    restore_inductor_pool,
    use_pyruntime_pool,
)
from ._inductor_worker import InductorPickler

__all__ = [
    "FxSubprocessPatch",
    "InductorPickler",
    "InductorPool",
    "InductorPoolPatch",
    "KernelRecorder",
    "active_patch",
    "export_triton_cache",
    "from_inductor_bundle",
    "inductor_triton_cache_dir",
    "record_triton_kernels",
    "restore_inductor_pool",
    "restore_triton_bundle",
    "to_inductor_bundle",
    "use_pyruntime_fx_subprocess",
    "use_pyruntime_pool",
]
