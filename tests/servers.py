"""Real servers for the store tests: redis-server and moto's S3 server on
free loopback ports (started with pyruntime.bench._servers), as pytest
fixtures; a TCP proxy that holds a transfer half-way so a test can kill
the server mid-pull; raw access to stored objects (to cut or flip them);
and a check that a cache holds exactly a bundle's kernels, complete.

Import the fixtures into a test module: ``from servers import redis_server, ...``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from typing import Any, Iterator

import pytest

from pyruntime.bench import _servers as S

# --------------------------------------------------------------------------
# servers


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: Any) -> Iterator[S.LocalServer]:
    """One redis-server for the session (tests use their own key prefixes)."""
    try:
        server = S.start_redis(str(tmp_path_factory.mktemp("redis")))
    except S.ServerUnavailable as e:
        pytest.skip(str(e))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: Any) -> Iterator[S.LocalServer]:
    """One moto S3 server for the session (tests use their own buckets)."""
    try:
        server = S.start_s3(str(tmp_path_factory.mktemp("s3")))
    except S.ServerUnavailable as e:
        pytest.skip(str(e))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S.LocalServer, monkeypatch: Any) -> dict[str, str]:
    """boto3's settings for the session's S3 server, in os.environ (and so
    in every child process) for this test."""
    env = S.s3_env(s3_server.url)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


def new_bucket(endpoint: str) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    S.make_bucket(endpoint, name)
    return name


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------
# raw objects


class RawObjects:
    """Direct access to a store's objects, past pyruntime: read, overwrite
    (with cut or flipped bytes), for the fault tests."""

    def __init__(self, kind: str, **where: Any) -> None:
        self.kind, self.where = kind, where

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.where["url"])

    def _s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.where["endpoint"], region_name=S.S3_REGION,
                            aws_access_key_id=S.S3_ACCESS_KEY, aws_secret_access_key=S.S3_SECRET_KEY)

    def get(self, key: str) -> bytes:
        if self.kind == "file":
            with open(os.path.join(self.where["root"], key), "rb") as f:
                return f.read()
        if self.kind == "redis":
            return self._redis().get(f"{self.where['prefix']}:{key}")
        obj = self._s3().get_object(Bucket=self.where["bucket"], Key=f"{self.where['prefix']}/{key}")
        return obj["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        if self.kind == "file":
            path = os.path.join(self.where["root"], key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        elif self.kind == "redis":
            self._redis().set(f"{self.where['prefix']}:{key}", data)
        else:
            self._s3().put_object(Bucket=self.where["bucket"], Key=f"{self.where['prefix']}/{key}", Body=data)

    def flip(self, key: str, offset: int) -> None:
        """Flip every bit of one byte of the stored object, in place (in
        Redis with SETRANGE, the way a bad disk or a bad actor would)."""
        if self.kind == "redis":
            r = self._redis()
            full = f"{self.where['prefix']}:{key}"
            old = r.getrange(full, offset, offset)
            r.setrange(full, offset, bytes([old[0] ^ 0xFF]))
            return
        data = bytearray(self.get(key))
        data[offset] ^= 0xFF
        self.put(key, bytes(data))


# --------------------------------------------------------------------------
# a proxy that holds a transfer half-way


class PausingProxy:
    """127.0.0.1:``port`` -> 127.0.0.1:``upstream``. Server-to-client bytes
    flow until ``limit`` of them have passed in total; then the proxy holds
    the rest and sets :attr:`paused`. :meth:`release` then drops every
    connection and stops listening, so what the client sees next is what
    it would see of a server killed mid-transfer: a cut stream, then
    connections refused."""

    def __init__(self, upstream: int, limit: int) -> None:
        self.upstream, self.limit = upstream, limit
        self.passed = 0
        self.paused = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._released.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counted:
                    with self._lock:
                        room = self.limit - self.passed
                        take = data[:max(room, 0)]
                        self.passed += len(take)
                    if take:
                        dst.sendall(take)
                    if len(take) < len(data):
                        self.paused.set()
                        self._released.wait()
                        break
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def release(self) -> None:
        self._released.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    close = release


# --------------------------------------------------------------------------
# what a cache must hold


def expected_files(bundle_path: str, cache_dir: str) -> dict[str, dict[str, bytes]]:
    """kernel hash -> {file name: bytes} that a restore of ``bundle_path``
    into ``cache_dir`` writes (``[REPLACE]`` in .json files becomes the
    kernel's directory, JSON-escaped)."""
    import pyruntime

    bundle = pyruntime.TritonBundle.load(bundle_path)
    root = json.dumps(os.path.join(os.path.abspath(cache_dir), ""))[1:-1].encode()
    out = {}
    for k in bundle.kernel_artifacts:
        files = {}
        for a in k.artifacts:
            data = bytes(a.payload)
            if a.filename.endswith(".json"):
                data = data.replace(b"[REPLACE]", root + k.kernel_hash.encode())
            files[a.filename] = data
        out[k.kernel_hash] = files
    return out


def kernel_dirs(cache_dir: str) -> list[str]:
    """The kernel directories (and any litter) in ``cache_dir``, without
    pyruntime's own ``.pyruntime`` state directory."""
    if not os.path.isdir(cache_dir):
        return []
    return sorted(n for n in os.listdir(cache_dir) if n != ".pyruntime")


def assert_kernels(cache_dir: str, bundle_path: str, only: list[str] | None = None) -> None:
    """``cache_dir`` holds exactly the kernels ``only`` (default: all of the
    bundle's), each complete and byte for byte right, and no ``tmp.*``."""
    want = expected_files(bundle_path, cache_dir)
    hashes = sorted(want if only is None else only)
    assert kernel_dirs(cache_dir) == hashes
    for h in hashes:
        d = os.path.join(cache_dir, h)
        assert sorted(os.listdir(d)) == sorted(want[h]), h
        for name, data in want[h].items():
            with open(os.path.join(d, name), "rb") as f:
                assert f.read() == data, f"{h}/{name}"
