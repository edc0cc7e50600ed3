"""pyruntime for PyTorch Inductor (the optional ``torch`` extra).

This is the only part of pyruntime that imports torch; ``import pyruntime``
never does. Four integrations:

1. :func:`use_pyruntime_pool` makes Inductor's async compile (its Triton
   compile-worker pool) use a pyruntime :class:`~pyruntime.pool.SubprocPool`;
   ``restore()`` / the ``with`` block puts Inductor's own pool back.
2. :func:`from_inductor_bundle` / :func:`to_inductor_bundle` convert between
   Inductor's ``TritonBundle`` and pyruntime bundles;
   :func:`record_triton_kernels` (or :func:`export_triton_cache`) exports the
   Triton kernels of a torch.compile run to a bundle file, and
   :func:`restore_triton_bundle` puts them into the cache before the next run.
3. :func:`save_compile_artifacts` / :func:`load_compile_artifacts` carry
   everything a torch.compile warm start needs (torch's Mega-Cache, the
   Triton kernels, autotuning results, compiled libraries) in one verified,
   optionally signed file (:mod:`pyruntime.torch.artifacts`, docs/TORCH.md).
4. :func:`use_pyruntime_fx_subprocess` runs Inductor's subprocess FX-compile
   mode on pyruntime's out-of-process child
   (:func:`pyruntime.outofproc.run_out_of_process`), which clears its caches
   only when the parent's cache generation moved.

Importing this package links Inductor's ``clear_caches()`` to
:func:`pyruntime.outofproc.bump_cache_generation`; the rest loads on first
use of a name, so the pool's sidecar and workers, which import modules of
this package, load only what they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _generation  # noqa: F401  (Inductor's clear_caches() bumps the generation)

_LAZY = {
    "KernelRecorder": "bundles",
    "export_triton_cache": "bundles",
    "from_inductor_bundle": "bundles",
    "inductor_triton_cache_dir": "bundles",
    "record_triton_kernels": "bundles",
    "restore_triton_bundle": "bundles",
    "to_inductor_bundle": "bundles",
    "FxSubprocessPatch": "fx",
    "use_pyruntime_fx_subprocess": "fx",
    "InductorPool": "pool",
    "InductorPoolPatch": "pool",
    "active_patch": "pool",
    "restore_inductor_pool": "pool",
    "use_pyruntime_pool": "pool",
    "InductorPickler": "_inductor_worker",
    "ArtifactsInfo": "artifacts",
    "CacheKindReport": "artifacts",
    "LoadReport": "artifacts",
    "SaveSummary": "artifacts",
    "SignatureError": "artifacts",
    "generate_signing_key": "artifacts",
    "load_compile_artifacts": "artifacts",
    "read_compile_artifacts": "artifacts",
    "save_compile_artifacts": "artifacts",
    "sign_compile_artifacts": "artifacts",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyruntime.torch' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except (ImportError, AttributeError) as e:
        if module != "fx":
            raise
        # a torch without the subprocess FX-compile mode: everything else still works
        reason = f"{type(e).__name__}: {e}"

        def unavailable(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError(f"Inductor's subprocess FX-compile mode is not available in this torch ({reason})")

        value = unavailable
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from ._inductor_worker import InductorPickler
    from .artifacts import (
        ArtifactsInfo,
        CacheKindReport,
        LoadReport,
        SaveSummary,
        SignatureError,
        generate_signing_key,
        load_compile_artifacts,
        read_compile_artifacts,
        save_compile_artifacts,
        sign_compile_artifacts,
    )
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
