"""framing suite: frames through a real pipe, C backend vs the Python twin.

A writer child process per backend (same backend on both ends) sits on a
control pipe; for each round the bench asks it for ``count`` frames of
``size`` bytes and times, in the reader, from the request to the last frame
read and verified. The data pipe is enlarged to 1 MiB as the pool does.

Run as ``python -m pyruntime.bench._framing CTL_FD DATA_FD`` it is that
writer (the backend comes from PYRUNTIME_PURE_PYTHON like everywhere else).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from typing import Any

from . import _common as C
from ._common import use_backend

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
SIZES = ((64, "frames_64B", "64-byte frames through a pipe"),
         (1 << 20, "frames_1MiB", "1 MiB frames through a pipe"))


class _Writer:
    def __init__(self, backend: str) -> None:
        self.ctl_r, self.ctl_w = os.pipe()
        self.data_r, self.data_w = os.pipe()
        try:
            fcntl.fcntl(self.data_w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        env = dict(os.environ)
        env["PYRUNTIME_PURE_PYTHON"] = "1" if backend == "twin" else "0"
        paths = [os.getcwd() if p == "" else p for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyruntime.bench._framing", str(self.ctl_r), str(self.data_w)],
            pass_fds=(self.ctl_r, self.data_w), env=env, stdin=subprocess.DEVNULL)
        os.close(self.ctl_r)
        os.close(self.data_w)

    def rate(self, count: int, size: int) -> float:
        """Frames per second for ``count`` frames of ``size`` bytes."""
        from ..framing import read_frame

        fd = self.data_r
        start = time.perf_counter()
        os.write(self.ctl_w, f"{count} {size}\n".encode())
        for _ in range(count):
            read_frame(fd)
        return count / (time.perf_counter() - start)

    def close(self) -> None:
        os.close(self.ctl_w)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.data_r)


def run(settings: C.Settings) -> dict[str, Any]:
    from .. import core

    prog = C.progress_of(settings)
    backends = {b.name: b for b in core.backends()}
    impls = ["c", "twin"]
    backends["twin"] = backends.pop("python")
    writers: dict[str, _Writer] = {}
    try:
        for name in impls:
            if name in backends:
                writers[name] = _Writer(name)
        metrics = []
        for size, mid, title in SIZES:
            counts: dict[str, int] = {}
            for name, w in writers.items():
                probe = 2000 if size < 4096 else 8
                with use_backend(backends[name]):
                    w.rate(probe // 4, size)  # warm-up: imports, page faults
                    r = w.rate(probe, size)
                counts[name] = max(probe, int(r * settings.round_time))
            per_round: dict[str, list[float]] = {n: [] for n in writers}
            for rnd in range(settings.rounds):
                for name, w in writers.items():
                    prog.step("framing", f"{title}: {name} round {rnd + 1}/{settings.rounds}")
                    with use_backend(backends[name]):
                        per_round[name].append(w.rate(counts[name], size))
            values: dict[str, Any] = {}
            for name in impls:
                if name not in writers:
                    values[name] = C.na("C module not built")
                    continue
                if size >= 4096:
                    values[name] = C.summarize([r * size for r in per_round[name]])
                else:
                    values[name] = C.summarize(per_round[name])
            if size >= 4096:
                metrics.append(C.metric(mid, title, "B/s", "higher", "c", values))
            else:
                metrics.append(C.metric(mid, title, "1/s", "higher", "c", values, label="frames/s"))
    finally:
        for w in writers.values():
            w.close()
    return C.suite_result(
        "framing", metrics=metrics,
        method=("one writer process per backend (same backend on both ends) writes frames into a "
                "1 MiB pipe; the bench process reads and verifies them with pyruntime.framing."
                "read_frame; rate = frames / (request .. last frame read)"),
        extra={"pipe_size": PIPE_SIZE})


def _writer_main(ctl_fd: int, data_fd: int) -> None:
    from ..framing import write_frame

    payloads: dict[int, bytes] = {}
    with os.fdopen(ctl_fd, "rb", buffering=0) as ctl:
        while True:
            line = ctl.readline()
            if not line:
                return
            count, size = map(int, line.split())
            payload = payloads.get(size)
            if payload is None:
                payload = payloads[size] = os.urandom(size)
            for i in range(count):
                write_frame(data_fd, 1, i, payload)


if __name__ == "__main__":
    _writer_main(int(sys.argv[1]), int(sys.argv[2]))
