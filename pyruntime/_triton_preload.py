"""Imported for its effect: warm Triton in this process.

``precompile`` names this module in ``SubprocPool(preload=...)``, so the
pool's sidecar imports triton, hashes libtriton and builds one tiny probe
kernel (into a throw-away cache) before it forks the compile workers. Each
worker then starts with all of that done instead of paying about a second on
its first kernel. Warming starts no thread, so the fork stays safe. Anywhere
else, importing this module costs that second once.
"""

from __future__ import annotations

from .compile_tasks import warm_triton

warm_triton()
