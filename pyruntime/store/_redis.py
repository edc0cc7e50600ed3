"""``redis://[:password@]host:port/db[?prefix=P]``: a bundle store in
Redis (redis-py, the ``pyruntime[redis]`` extra). Keys are
``<prefix>:<object key>`` (prefix ``pyruntime`` by default); a bundle is one
string value (Redis strings hold up to 512 MiB)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._base import (
    BundleStore,
    StoreError,
    StoreObjectError,
    StoreUnavailableError,
    shown,
    timeout_s,
)

DEFAULT_PREFIX = "pyruntime"


def _display(parts: Any) -> str:
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or ''}"


class RedisStore(BundleStore):
    def __init__(self, url: str) -> None:
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError:
            raise StoreError("redis:// stores need redis-py: pip install 'pyruntime[redis]'") from None
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = DEFAULT_PREFIX
        rest = []
        for k, v in query:
            if k == "prefix":
                prefix = v
            else:
                rest.append((k, v))
        if not prefix or any(c in prefix for c in " \n\r\t"):
            raise ValueError(f"redis store prefix {shown(prefix)} must be non-empty without spaces")
        self.prefix = prefix
        self.url = _display(parts) + (f"?prefix={prefix}" if prefix != DEFAULT_PREFIX else "")
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._redis_error = redis.exceptions.RedisError
        t = timeout_s()
        try:
            self._r = redis.Redis.from_url(
                urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), "")),
                socket_timeout=t, socket_connect_timeout=t,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), retry_on_timeout=False,
            )
        except ValueError as e:
            raise ValueError(f"redis store URL {shown(self.url)}: {e}") from None

    def _k(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as e:
            raise self._error(StoreUnavailableError, f"{what}: {shown(str(e) or type(e).__name__)}") from None
        except self._redis_error as e:
            raise self._error(StoreError, f"{what}: {shown(str(e) or type(e).__name__)}") from None

    def _get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        if max_bytes is not None:
            size = self._call(f"cannot read {key}", self._r.strlen, self._k(key))
            if size > max_bytes:
                raise self._error(StoreObjectError, f"{key} is {size} bytes, over the {max_bytes}-byte limit")
        return self._call(f"cannot read {key}", self._r.get, self._k(key))

    def _get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self._call(f"cannot read {len(keys)} keys", self._r.mget, [self._k(k) for k in keys]))

    def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._call(f"cannot write {key}", lambda: self._r.set(self._k(key), data, nx=if_absent))

    def _exists(self, key: str) -> bool:
        return bool(self._call(f"cannot look up {key}", self._r.exists, self._k(key)))

    def _list(self, prefix: str) -> dict[str, int]:
        def scan() -> dict[str, int]:
            keys = [k.decode("utf-8", "replace") for k in self._r.scan_iter(match=self._k(prefix) + "*", count=1000)]
            pipe = self._r.pipeline(transaction=False)
            for k in keys:
                pipe.strlen(k)
            sizes = pipe.execute() if keys else []
            cut = len(self.prefix) + 1
            return {k[cut:]: int(s) for k, s in zip(keys, sizes)}
        return self._call(f"cannot list {prefix}", scan)

    def close(self) -> None:
        try:
            self._r.close()
        except self._redis_error:
            pass
