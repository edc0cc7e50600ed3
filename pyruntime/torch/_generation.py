"""Links Inductor's ``clear_caches()`` to pyruntime's cache generation.

Inductor calls ``cache_clear()`` on every object registered with
``clear_on_fresh_cache`` whenever its caches are cleared (entering or
leaving ``fresh_cache()``, ``temporary_cache_dir()``, tests). Registering
:class:`GenerationBump` there makes each of those bump
:func:`pyruntime.outofproc.bump_cache_generation`, so an out-of-process
child clears its own caches before its next job.
"""

from __future__ import annotations

from torch._inductor.utils import clear_on_fresh_cache

from ..outofproc import bump_cache_generation


class GenerationBump:
    """Registered with Inductor: its ``clear_caches()`` calls ``cache_clear``."""

    @staticmethod
    def cache_clear() -> None:
        bump_cache_generation()


clear_on_fresh_cache(GenerationBump)  # once: a module is imported once per process
