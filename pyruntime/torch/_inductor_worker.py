"""Worker-side helpers of the Inductor pool; importing this is cheap and
has no side effects (the sidecar's start-up work is in _sidecar_preload)."""

from __future__ import annotations

import os
from typing import Any

from ..pool import SubprocPickler


def init_worker() -> None:
    """Per-worker set-up, as Inductor's own workers get it: mark the process
    as a compile worker, ignore Ctrl-C, install torch's crash handler."""
    try:
        from torch._inductor.compile_worker.utils import _async_compile_initializer
    except ImportError:  # a torch without it: the part that matters most
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return
    _async_compile_initializer(os.getppid())


class InductorPickler(SubprocPickler):
    """Serialises call and result items with Inductor's own SubprocPickler,
    so whatever torch chooses there (today plain pickle) holds on our pool
    too. The sidecar and workers import it by name."""

    def __init__(self) -> None:
        from torch._inductor.compile_worker.subproc_pool import SubprocPickler as TorchPickler

        self._torch = TorchPickler()

    def dumps(self, obj: Any) -> bytes:
        return self._torch.dumps(obj)

    def loads(self, data: Any) -> Any:
        return self._torch.loads(data)
