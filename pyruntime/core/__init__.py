"""The backend layer: the C core or its pure-Python twin, picked once.

``BACKEND`` is ``"c"`` when the compiled module ``pyruntime.core._c`` (built
from ``csrc/`` by cffi) loads and matches this package's ABI stamp, and
``"python"`` when it is absent or ``PYRUNTIME_PURE_PYTHON=1`` is set. A stale
build (ABI mismatch) is an ImportError rather than a silent fallback, since
it means a broken install.

Both backends (:class:`pyruntime.core.c.CBackend`,
:class:`pyruntime.core.twin.PythonBackend`) expose the same functions with
the same bytes in and out; :func:`backends` returns every one that can
load, for the test suite. This layer knows frames, digests, pack containers
and files, nothing about bundles or pools.
"""

from __future__ import annotations

from typing import Any

from .. import config
from .c import ABI_VERSION, CBackend
from .twin import PythonBackend

__all__ = ["ABI_VERSION", "BACKEND", "backend", "backends"]


def _load_c() -> CBackend | None:
    try:
        from . import _c  # type: ignore[attr-defined]
    except ImportError:
        return None
    return CBackend(_c)


def backends() -> list[Any]:
    """Every backend that loads here: the C one first when it is built."""
    found: list[Any] = []
    c = _load_c()
    if c is not None:
        found.append(c)
    found.append(PythonBackend())
    return found


def _select() -> Any:
    if config.pure_python():
        return PythonBackend()
    return _load_c() or PythonBackend()


backend: Any = _select()
BACKEND: str = backend.name
