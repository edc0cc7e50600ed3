"""``s3://bucket/prefix``: a bundle store in S3 or any S3-compatible
service (MinIO, Ceph RGW, moto, ...) through boto3 (the ``pyruntime[s3]``
extra). The endpoint is ``endpoint=`` (``--endpoint``), else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (read by boto3 itself), else
AWS. Credentials and region come from boto3's usual chain; without a
region ``us-east-1`` is used. The bucket must exist."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ._base import (
    BundleStore,
    StoreError,
    StoreNotFoundError,
    StoreObjectError,
    StoreUnavailableError,
    shown,
    timeout_s,
)

_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\"\]\)]{1,80})")
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_READ_CHUNK = 8 << 20


class S3Store(BundleStore):
    def __init__(self, url: str, endpoint: str | None = None) -> None:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
            import urllib3.exceptions
        except ImportError:
            raise StoreError("s3:// stores need boto3: pip install 'pyruntime[s3]'") from None
        parts = urlsplit(url)
        self.bucket = parts.netloc
        if not self.bucket or "@" in self.bucket:
            raise ValueError(f"S3 store URL {shown(url)} has no bucket (s3://bucket/prefix)")
        self.prefix = parts.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._exc = botocore.exceptions
        # what a request or a streaming body can raise (urllib3's errors
        # escape botocore while a body is read)
        self._catch: tuple[type[BaseException], ...] = (
            botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
            urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
        t = timeout_s()
        config = botocore.config.Config(
            connect_timeout=t, read_timeout=t, retries={"total_max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
        )
        session = boto3.session.Session()
        try:
            self._s3 = session.client("s3", endpoint_url=endpoint or None, config=config,
                                      region_name=session.region_name or "us-east-1")
        except (ValueError, self._exc.BotoCoreError) as e:
            raise ValueError(f"S3 store {self.url}: {shown(str(e))}") from None
        self.endpoint = str(self._s3.meta.endpoint_url)
        if "amazonaws.com" not in self.endpoint:
            self.url += f" (endpoint {shown(self.endpoint)})"

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, e: BaseException) -> StoreError:
        exc = self._exc
        if isinstance(e, exc.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            msg = str(err.get("Message", "") or code)
            if code == "NoSuchBucket":
                return self._error(StoreNotFoundError, f"bucket {shown(self.bucket)} does not exist")
            if code in _NOT_FOUND:
                return self._error(StoreNotFoundError, f"{what}: not found")
            return self._error(StoreError, f"{what}: {shown(code)}: {shown(msg)}")
        if isinstance(e, exc.NoCredentialsError):
            return self._error(StoreError, f"{what}: no AWS credentials (set AWS_ACCESS_KEY_ID/"
                                           "AWS_SECRET_ACCESS_KEY or a profile)")
        if isinstance(e, exc.EndpointConnectionError):
            cause = str(e.kwargs.get("error", ""))
            errno_text = _ERRNO_RE.search(cause)
            why = errno_text.group(1) if errno_text else "unreachable"
            return self._error(StoreUnavailableError, f"{what}: cannot connect to {shown(self.endpoint)}: {shown(why)}")
        return self._error(StoreUnavailableError, f"{what}: {shown(str(e) or type(e).__name__)}")

    def _missing_key(self, e: BaseException) -> bool:
        """Whether ``e`` says the key is absent (not the bucket)."""
        if not isinstance(e, self._exc.ClientError):
            return False
        return str(e.response.get("Error", {}).get("Code", "")) in _NOT_FOUND

    def _get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        what = f"cannot read {key}"
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=self._k(key))
        except self._catch as e:
            if self._missing_key(e):
                return None
            raise self._fail(what, e) from None
        body = resp["Body"]
        length = int(resp.get("ContentLength", -1))
        try:
            if max_bytes is not None and length > max_bytes:
                raise self._error(StoreObjectError, f"{key} is {length} bytes, over the {max_bytes}-byte limit")
            # read into one buffer of the announced size; a short or long
            # body is an error (botocore checks the length too)
            buf = bytearray(length) if length >= 0 else bytearray()
            view = memoryview(buf)
            got = 0
            while True:
                chunk = body.read(_READ_CHUNK)
                if not chunk:
                    break
                if length >= 0:
                    if got + len(chunk) > length:
                        raise self._error(StoreObjectError, f"{key}: more bytes than the {length} announced")
                    view[got:got + len(chunk)] = chunk
                else:
                    buf += chunk
                got += len(chunk)
            if length >= 0 and got != length:
                raise self._error(StoreUnavailableError, f"{what}: the connection ended after {got} of {length} bytes")
        except StoreError:
            body.close()
            raise
        except self._catch as e:
            body.close()
            raise self._fail(what, e) from None
        del view
        return bytes(buf)

    def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        except self._catch as e:
            raise self._fail(f"cannot write {key}", e) from None

    def _exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except self._catch as e:
            if self._missing_key(e):  # HEAD has no body: a missing bucket is a 404 too, found on the put
                return False
            raise self._fail(f"cannot look up {key}", e) from None

    def _list(self, prefix: str) -> dict[str, int]:
        out = {}
        cut = len(self._k(""))
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._k(prefix))
            for page in pages:
                for obj in page.get("Contents", ()):
                    out[obj["Key"][cut:]] = int(obj["Size"])
        except self._catch as e:
            raise self._fail(f"cannot list {prefix}", e) from None
        return out

    def close(self) -> None:
        try:
            self._s3.close()
        except (AttributeError, self._exc.BotoCoreError):
            pass
