"""Exceptions raised by pyruntime.

Every exception subclasses :class:`PyRuntimeError` and, where one fits, a
builtin too, so callers can catch either ``ProtocolError`` or ``ValueError``.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

#: Longest error line printed; messages name the problem and cut hostile
#: values well below this, which only stops what slipped through.
MAX_MESSAGE = 1000


def one_line(text: str) -> str:
    """``text`` on one line of at most :data:`MAX_MESSAGE` characters."""
    flat = " ".join(text[: 2 * MAX_MESSAGE].split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 3] + "..."


class PyRuntimeError(Exception):
    """Base class of every pyruntime error."""


class ProtocolError(PyRuntimeError, ValueError):
    """A frame on a pipe is malformed: bad magic or version, truncated,
    over the length limit, or its checksum does not match."""


class BundleFormatError(PyRuntimeError, ValueError):
    """A packed container or bundle is malformed; the message names the
    problem. Nothing was written when this is raised."""


class BundleCompatibilityError(PyRuntimeError, RuntimeError):
    """A bundle was made for another Triton version or target."""


class KernelPathConflictError(PyRuntimeError, RuntimeError):
    """A restore under ``on_conflict="error"`` found kernel paths held by
    something that is not a kernel directory (a file, FIFO, socket, device
    or symlink). ``blocked`` maps each such kernel hash to what holds its
    path; ``result`` is the restore's result when the conflict appeared only
    while writing (then the other kernels were written), else ``None``
    (nothing was written)."""

    def __init__(self, message: str, blocked: dict[str, str], result: object = None) -> None:
        super().__init__(message)
        self.blocked = blocked
        self.result = result


class BrokenPoolError(PyRuntimeError, BrokenExecutor):
    """The pool's sidecar died or the pool was shut down while a job was
    pending. The next ``submit`` starts a new sidecar."""


class WorkerDiedError(PyRuntimeError, ChildProcessError):
    """The worker running a job died (signal, ``os._exit``, killed for
    memory); the message names the exit code or signal."""


class WorkerMemoryError(WorkerDiedError, MemoryError):
    """The worker running a job went over the pool's per-worker memory
    limit and was stopped."""


class JobTimeoutError(PyRuntimeError, TimeoutError):
    """A job ran past its timeout; its worker was killed and replaced."""


class UserError(PyRuntimeError):
    """A problem with the user's input to the command line; printed as one
    line without a traceback."""


class JITCompileError(PyRuntimeError, RuntimeError):
    """Triton's JIT was about to compile a kernel while frozen
    (:func:`pyruntime.freeze`). The first line of the message names the
    kernel and how it differs from the nearest bundled one; the attributes
    hold the same as data: ``kernel`` (name), ``launch`` and ``nearest``
    (:class:`pyruntime.specialize.Specialisation` or ``None``) and
    ``differences`` (:class:`pyruntime.specialize.Difference` items)."""

    def __init__(self, message: str, *, kernel: str | None = None, launch: object = None,
                 nearest: object = None, differences: tuple[object, ...] | list[object] = ()) -> None:
        super().__init__(message)
        self.kernel = kernel
        self.launch = launch
        self.nearest = nearest
        self.differences = list(differences)
