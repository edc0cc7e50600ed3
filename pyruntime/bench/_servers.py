"""Real servers on free loopback ports for the store tests and the bench:
``redis-server`` (the Debian package) and an S3-compatible server (moto's
server mode, pip ``moto[server]``). Each runs in its own session, listens
on 127.0.0.1 only, keeps nothing on disk, and is stopped (SIGTERM, then
SIGKILL) by :meth:`LocalServer.stop`.

:func:`start_redis` / :func:`start_s3` raise :class:`ServerUnavailable`
with the reason when the program is not installed, so callers can skip.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"


class ServerUnavailable(RuntimeError):
    """The server program is missing or did not start; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A server process started by :func:`start_redis` or :func:`start_s3`."""

    def __init__(self, kind: str, proc: subprocess.Popen[bytes], port: int, url: str, log_path: str) -> None:
        self.kind, self.proc, self.port, self.url, self.log_path = kind, proc, port, url, log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, grace: float = 5.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{self.kind} server pid {self.pid} at {self.url}>"


def _start(kind: str, argv_of: Callable[[int], list[str]], url_of: Callable[[int], str],
           ready: Callable[[int], bool], workdir: str, timeout: float, env: dict[str, str] | None = None) -> LocalServer:
    os.makedirs(workdir, exist_ok=True)
    last = ""
    for _attempt in range(3):  # a port taken between free_port() and the bind: try another
        port = free_port()
        log_path = os.path.join(workdir, f"{kind}-{port}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv_of(port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=workdir, start_new_session=True, env=env)
        server = LocalServer(kind, proc, port, url_of(port), log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server.alive():
            if ready(port):
                return server
            time.sleep(0.05)
        last = server.log_tail(400).strip().replace("\n", " | ")
        server.stop(1.0)
    raise ServerUnavailable(f"{kind} did not start on 127.0.0.1 within {timeout:g} s: {last[-300:]}")


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")
         if os.access(p, os.X_OK)), None)


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: str, timeout: float = 15.0) -> LocalServer:
    """``redis-server`` on a free port of 127.0.0.1, no persistence."""
    exe = redis_server_path()
    if exe is None:
        raise ServerUnavailable("redis-server is not installed (Debian package redis-server; "
                                "tests/run.sh installs it when it runs as root or with sudo)")
    return _start(
        "redis",
        lambda port: [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", workdir, "--protected-mode", "yes", "--daemonize", "no",
                      "--proto-max-bulk-len", "1gb"],
        lambda port: f"redis://127.0.0.1:{port}/0", _redis_ready, workdir, timeout)


def moto_available() -> str | None:
    """Why moto's server cannot run here, or None when it can."""
    for mod in ("moto", "flask", "werkzeug", "boto3"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'moto[server]' boto3, or the test extra)"
    return None


def _http_ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/moto-api/")
            return conn.getresponse().status < 500
        finally:
            conn.close()
    except OSError:
        return False


def s3_env(endpoint: str) -> dict[str, str]:
    """What boto3 needs to talk to the local S3 server (credentials it
    accepts, a region, the endpoint), for os.environ or a child's env."""
    return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION, "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true"}


def start_s3(workdir: str, timeout: float = 60.0) -> LocalServer:
    """moto's S3-compatible server on a free port of 127.0.0.1; ``url`` is
    its endpoint (``http://127.0.0.1:PORT``). Data lives in its memory."""
    why = moto_available()
    if why is not None:
        raise ServerUnavailable(why)
    env = dict(os.environ)
    env.pop("AWS_ENDPOINT_URL", None)
    return _start(
        "s3",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        lambda port: f"http://127.0.0.1:{port}", _http_ready, workdir, timeout, env=env)


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION, aws_access_key_id=S3_ACCESS_KEY,
                      aws_secret_access_key=S3_SECRET_KEY)
    try:
        s3.create_bucket(Bucket=bucket)
    finally:
        s3.close()
