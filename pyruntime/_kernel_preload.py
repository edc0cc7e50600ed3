"""Imported for its effect: import the kernel modules of a precompile run.

``precompile`` names this module first in ``SubprocPool(preload=...)`` and
puts the modules in the sidecar's environment
(:func:`pyruntime.kernel_imports.preload_env`), so the sidecar imports
each once before it forks the compile workers, which inherit them. A module
that fails here is recorded, not raised: workers then import it themselves.

The first of those imports also hashes libtriton for Triton's
``triton_key()`` on a thread meanwhile (:func:`pyruntime.kernel_imports.import_kernel`),
joined before the import returns, so the sidecar forks with one thread, as
it must. Anywhere else, importing this module with the variable unset does
nothing.
"""

from __future__ import annotations

from .kernel_imports import preload_from_env

preload_from_env()
