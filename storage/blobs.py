"""Content-addressed blob store on fsspec.

Keys are ``ab/cd/<sha256>``. Local folders get atomic writes (temp file in the same folder,
fsync, rename), so a process killed mid-write leaves no partial blob under a final key; object
stores (``s3://…`` with s3fs installed) write whole objects atomically by themselves. Puts are
idempotent: a key that exists (locally: with the right size) is not written again.

A writer that stores many blobs and then commits rows naming them (the scraper) may put with
``durable=False`` and call ``sync()`` before its commit: the writes are still atomic (kill -9
safe), and one ``syncfs`` makes the whole batch durable instead of two fsyncs per blob.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec


class BlobError(RuntimeError):
    """A blob could not be stored or read; carries the key."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"blob {key}: {reason}")
        self.key = key

    def __reduce__(self):
        # pickled as it is (message and fields), not by calling __init__ again with the message:
        # a DataLoader or process-pool worker hands these to its parent
        return _restore_error, (type(self), self.args, self.__dict__)


def _restore_error(cls: type[BlobError], args: tuple, state: dict) -> BlobError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class BlobCorrupt(BlobError):
    """A content-addressed blob whose bytes no longer hash to its key (bit rot, a bad copy, a
    partial write that was never atomic): it is never handed out as if it were the image."""

    def __init__(self, key: str, actual: str):
        self.reason = f"bytes hash to {actual[:16]}…, not to the key"
        super().__init__(key, self.reason)
        self.actual = actual


class BlobStoreUnavailable(BlobError):
    """The object store did not answer for a key within the retry deadline."""

    def __init__(self, key: str, root: str, waited_s: float, error: BaseException):
        super().__init__(key, f"store {root} unreachable for {waited_s:.0f} s (gave up): {type(error).__name__}: {error}")
        self.waited_s = waited_s


class DiskFull(BlobError):
    """A local blob could not be written: no space left on the device holding ``path``."""

    def __init__(self, key: str, path: str):
        super().__init__(key, f"disk full: no space left on the device holding {path}; free space and re-run")
        self.path = path


# faults of the store itself, not of one blob: a step stops on them with its named error (no
# image is to blame, none gets a failure row) and a re-run redoes what was in hand
STORE_FAULTS = (BlobStoreUnavailable, DiskFull)

# errors of a store that is down or unreachable (the connection, not the request): botocore's
# connection errors by name (botocore is optional), and the OS's own
_UNREACHABLE_NAMES = {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                      "ServerDisconnectedError", "ClientConnectorError", "ClientOSError", "HTTPClientError"}


_FULL = (errno.ENOSPC, errno.EDQUOT)


def store_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) says the object store could not be reached."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ConnectionError | TimeoutError) or type(exc).__name__ in _UNREACHABLE_NAMES:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def blob_key(sha256: str) -> str:
    if not _SHA256_HEX.fullmatch(sha256):
        raise BlobError(sha256, "not a lowercase hex sha256")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def check_content(key: str, data: bytes) -> bytes:
    """``data`` when it hashes to ``key``'s sha256 (or the key is not content-addressed);
    otherwise ``BlobCorrupt``."""
    name = key.rsplit("/", 1)[-1]
    if _SHA256_HEX.fullmatch(name) and key == blob_key(name) and (actual := sha256_bytes(data)) != name:
        raise BlobCorrupt(key, actual)
    return data


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folder(folder: str) -> bool:
    """Create ``folder`` (and its parents); True when this call created it, False when it was there
    (or another process made it meanwhile)."""
    try:
        os.mkdir(folder)
        return True
    except FileExistsError:
        return False
    except FileNotFoundError:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        try:
            os.mkdir(folder)
            return True
        except FileExistsError:
            return False


def _temp_file(folder: str) -> tuple[int, str]:
    """A new, exclusive, private temp file in ``folder`` (what ``tempfile.mkstemp`` gives, for a
    tenth of its Python overhead): ``(fd, path)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        path = f"{folder}/.tmp-{random.getrandbits(64):016x}.part"
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue


_LIBC_SYNCFS = None  # resolved on first use: libc's syncfs, or False where there is none


def _syncfs(path: str) -> bool:
    """``syncfs(2)`` on the file system holding ``path``; False where the platform lacks it."""
    global _LIBC_SYNCFS
    if _LIBC_SYNCFS is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).syncfs
            fn.argtypes = [ctypes.c_int]
            _LIBC_SYNCFS = fn
        except (AttributeError, OSError):
            _LIBC_SYNCFS = False
    if not _LIBC_SYNCFS:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC_SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return True


class BlobStore:
    """Blobs under ``root`` (a local folder or an fsspec URL such as ``s3://bucket/prefix``)."""

    def __init__(self, root: str | os.PathLike, storage_options: dict | None = None, retry_s: float = 60.0):
        root = str(root)
        self.retry_s = retry_s  # how long an object store that does not answer is retried
        self.fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = path.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self._unsynced: list[tuple[str, str]] = []  # (file, folder) put with durable=False
        self._unsynced_lock = threading.Lock()
        self._folders: set[str] = set()  # folders this process made or found (set.add is atomic)

    @classmethod
    def from_settings(cls, settings) -> BlobStore:
        """The store named by the pipeline's storage stage (``Settings.storage``): ``blob_root``,
        ``blob_storage_options()``, ``blob_retry_s``."""
        return cls(settings.blob_root, settings.blob_storage_options(), settings.blob_retry_s)

    def _remote(self, key: str, fn, *args):
        """``fn(*args)`` against the object store, retried with backoff while the store is
        unreachable, for up to ``retry_s``; then ``BlobStoreUnavailable``. Other errors (a
        missing key, a refusal) are raised at once."""
        start, attempt = time.monotonic(), 0
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                waited = time.monotonic() - start
                if not store_unreachable(exc):
                    raise
                if waited >= self.retry_s:
                    raise BlobStoreUnavailable(key, self.root, waited, exc) from exc
                time.sleep(min(2.0, 0.1 * 2**attempt, max(0.0, self.retry_s - waited)))
                attempt += 1

    def path(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise BlobError(key, "invalid key")
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path:
        """Filesystem path of a blob (local stores only)."""
        if not self.is_local:
            raise BlobError(key, "not a local blob store")
        return Path(self.path(key))

    def local_file(self, key: str, cache: Path) -> Path:
        """A filesystem path holding the blob: the blob itself in a local store; in an object
        store a copy under ``cache`` (written once, atomically), for readers that open files."""
        if self.is_local:
            return self.local_path(key)
        path = cache / key
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(self.get(key))
            tmp.replace(path)
        return path

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def put(self, data: bytes, durable: bool = True) -> tuple[str, str]:
        """Store ``data`` under its sha256; returns ``(sha256, key)``. Idempotent.

        ``durable=False`` (local stores): atomic but not yet fsynced; ``sync()`` makes it durable."""
        sha = sha256_bytes(data)
        key = blob_key(sha)
        self.put_at(key, data, durable)
        return sha, key

    def put_at(self, key: str, data: bytes, durable: bool = True) -> str:
        """Store ``data`` at ``key`` atomically unless the key exists already."""
        target = self.path(key)
        if not self.is_local:
            # an object is written whole or not at all, so a put retried after a lost answer is safe
            self._remote(key, lambda: self.fs.exists(target) or self.fs.pipe_file(target, data))
            return key
        # (a blob of the wrong size, e.g. emptied by a power cut before it was synced, is rewritten)
        folder = os.path.dirname(target)
        made = False  # True when this call created the folder: the blob cannot be there yet
        if folder not in self._folders:
            made = _make_folder(folder)
            self._folders.add(folder)
        if not made:
            try:
                if os.stat(target).st_size == len(data):
                    return key
            except FileNotFoundError:
                pass
        try:
            fd, tmp = _temp_file(folder)
        except FileNotFoundError:  # the folder was removed since
            os.makedirs(folder, exist_ok=True)
            fd, tmp = _temp_file(folder)
        except OSError as exc:
            if exc.errno in _FULL:
                raise DiskFull(key, folder) from exc
            raise
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            if durable:
                _fsync_path(folder)
            else:
                with self._unsynced_lock:
                    self._unsynced.append((target, folder))
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in _FULL:
                raise DiskFull(key, folder) from exc
            raise
        return key

    def sync(self) -> int:
        """Make every ``put(..., durable=False)`` so far durable; returns how many there were.
        One ``syncfs`` of the store's file system where Linux has it, else an fsync per file and
        folder."""
        with self._unsynced_lock:
            pending, self._unsynced = self._unsynced, []
        if not pending:
            return 0
        if not _syncfs(self.root):
            for folder in dict.fromkeys([*(f for f, _ in pending), *(d for _, d in pending)]):
                _fsync_path(folder)
        return len(pending)

    def put_file(self, path: str | os.PathLike) -> tuple[str, str]:
        return self.put(Path(path).read_bytes())

    def get(self, key: str, verify: bool = True) -> bytes:
        """The blob's bytes. A content-addressed key (``ab/cd/<sha256>``) is checked against its
        bytes (``verify``): a mismatch raises ``BlobCorrupt``, never returns the wrong bytes."""
        try:
            data = self.fs.cat_file(self.path(key)) if self.is_local else self._remote(key, self.fs.cat_file, self.path(key))
        except FileNotFoundError as exc:
            raise BlobError(key, "not found") from exc
        return check_content(key, data) if verify else data

    def open(self, key: str, mode: str = "rb"):
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

