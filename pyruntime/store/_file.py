"""``file:///path``: a bundle store in a directory (a local disk, or a
shared file system such as NFS). Every object is written to a temporary
file and renamed into place."""

from __future__ import annotations

import os

from .._atomic import write_atomic
from ._base import BundleStore, StoreError, StoreNotFoundError, StoreObjectError, shown


class FileStore(BundleStore):
    def __init__(self, root: str) -> None:
        if not root or not os.path.isabs(root):
            raise ValueError(f"file store path {shown(root)} must be absolute (file:///path)")
        self.root = os.path.normpath(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise self._error(StoreObjectError, f"{key} is {size} bytes, over the {max_bytes}-byte limit")
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            if not os.path.isdir(self.root):
                raise self._error(StoreNotFoundError, "the directory does not exist") from None
            return None
        except OSError as e:
            raise self._error(StoreError, f"cannot read {key}: {e.strerror or e}") from None
        return data

    def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        path = self._path(key)
        if if_absent and os.path.exists(path):
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, data)
        except OSError as e:
            raise self._error(StoreError, f"cannot write {key}: {e.strerror or e}") from None

    def _exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def _list(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix.rstrip("/"))
        if not os.path.isdir(self.root):
            raise self._error(StoreNotFoundError, "the directory does not exist")
        out = {}
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if ".tmp." in name:  # a write in flight (write_atomic's temporary names)
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                try:
                    out[rel] = os.stat(full).st_size
                except FileNotFoundError:
                    continue
        return out
