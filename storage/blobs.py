"""Content-addressed blob store on fsspec.

Keys are ``ab/cd/<sha256>``. Local folders get atomic writes (temp file in the same folder,
fsync, rename), so a process killed mid-write leaves no partial blob under a final key; object
stores (``s3://…`` with s3fs installed) write whole objects atomically by themselves. Puts are
idempotent: a key that exists is not written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec


class BlobError(RuntimeError):
    """A blob could not be stored or read; carries the key."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"blob {key}: {reason}")
        self.key = key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise BlobError(sha256, "not a lowercase hex sha256")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


class BlobStore:
    """Blobs under ``root`` (a local folder or an fsspec URL such as ``s3://bucket/prefix``)."""

    def __init__(self, root: str | os.PathLike, storage_options: dict | None = None):
        root = str(root)
        self.fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = path.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings) -> BlobStore:  # noqa: ANN001
        return cls(settings.blob_root, settings.blob_storage_options())

    def path(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise BlobError(key, "invalid key")
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path:
        """Filesystem path of a blob (local stores only)."""
        if not self.is_local:
            raise BlobError(key, "not a local blob store")
        return Path(self.path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def put(self, data: bytes) -> tuple[str, str]:
        """Store ``data`` under its sha256; returns ``(sha256, key)``. Idempotent."""
        sha = sha256_bytes(data)
        key = blob_key(sha)
        self.put_at(key, data)
        return sha, key

    def put_at(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key`` atomically unless the key exists already."""
        target = self.path(key)
        if self.fs.exists(target):
            return key
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return key
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return key

    def put_file(self, path: str | os.PathLike) -> tuple[str, str]:
        return self.put(Path(path).read_bytes())

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError as exc:
            raise BlobError(key, "not found") from exc

    def open(self, key: str, mode: str = "rb"):  # noqa: ANN201
        return self.fs.open(self.path(key), mode)

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm_file(self.path(key))

    def keys(self) -> Iterator[str]:
        """Every stored key (temp files excluded)."""
        if not self.fs.exists(self.root):
            return
        for p in self.fs.find(self.root):
            name = p.rsplit("/", 1)[-1]
            if name.startswith(".tmp-"):
                continue
            yield p[len(self.root) + 1 :] if p.startswith(self.root) else p.split(self.root.lstrip("/") + "/", 1)[-1]

    def remove_stale_temp(self) -> int:
        """Delete temp files left by killed writers (local stores); returns how many."""
        if not self.is_local:
            return 0
        n = 0
        for p in Path(self.root).rglob(".tmp-*.part"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n

