"""Spools: the queues of records an output keeps until its receiver acknowledged them.

`MemoryQueue` lives as long as the process; `DiskQueue` is a file that survives crashes and
restarts (pyaudisp-remote's ``mode = forward``, and any output that must never lose a
record it was handed).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import stat
import struct
import syslog
import zlib
from collections.abc import Callable
from typing import Final, Protocol

from auditpy.proto.records import MAX_AUDIT_MESSAGE_LENGTH


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class QueueError(Exception):
    """The on-disk queue cannot be used as it is; queue_error_action decides what next."""


class RecordQueue(Protocol):
    """FIFO of records not yet acknowledged by the server."""

    durable: bool

    def __len__(self) -> int: ...

    @property
    def sendable(self) -> int:
        """How many records from the head may be sent (forward mode: the fsynced ones)."""
        ...

    def get(self, index: int) -> bytes: ...

    def append_many(self, records: list[bytes]) -> None: ...

    def pop_front(self, count: int) -> None: ...

    def sync(self) -> None: ...

    @property
    def unsynced(self) -> int: ...

    def close(self) -> None: ...


class MemoryQueue:
    """immediate mode: records live only as long as this process."""

    durable = False

    def __init__(self) -> None:
        self._items: collections.deque[bytes] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def sendable(self) -> int:
        return len(self._items)

    @property
    def unsynced(self) -> int:
        return 0

    def get(self, index: int) -> bytes:
        return self._items[index]

    def append_many(self, records: list[bytes]) -> None:
        self._items.extend(records)

    def pop_front(self, count: int) -> None:
        for _ in range(min(count, len(self._items))):
            self._items.popleft()

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self._items.clear()


_QUEUE_MAGIC: Final = b"pyauditQ"
_QUEUE_VERSION: Final = 1
#: magic, version, reserved, head offset, reserved
_QUEUE_HEADER: Final = struct.Struct("<8sIIQQ")
_HEAD_FIELD: Final = struct.Struct("<Q")
_HEAD_OFFSET: Final = 16
#: length, crc32 of the payload
_RECORD: Final = struct.Struct("<II")
#: Rewrite the file once this many bytes at its start are acknowledged records and they
#: outweigh the live ones, so a never-empty queue does not grow the file without bound.
COMPACT_BYTES: Final = 4 << 20


class DiskQueue:
    """forward mode: an append-only file of records plus a durable head pointer.

    Layout: a 32-byte header (magic, version, the offset of the oldest unacknowledged
    record) and then records, each ``length, crc32, payload``.  A record is written (one
    pwrite per batch) as soon as it is read from stdin, so a crashed process loses nothing
    that the page cache holds, and is fsynced before it is sent, so a machine crash loses
    nothing the server already has.  An acknowledgement advances the head pointer with an
    8-byte pwrite; a crash therefore repeats only records whose acknowledgement had not
    been processed, i.e. at most the in-flight window.

    On start the records after the head are re-read; a torn or corrupt tail (a crash in
    the middle of a write) is cut off at the first record that fails its length or CRC
    check.  When everything is acknowledged the file is truncated back to the header.
    An exclusive flock keeps two plugins from sharing one file.
    """

    durable = True

    def __init__(
        self,
        path: str,
        log: Callable[[int, str], None],
        *,
        max_record: int = MAX_AUDIT_MESSAGE_LENGTH,
    ) -> None:
        self.path = path
        self._log = log
        #: a longer record on disk can only be a corrupt length field
        self._max_record = max_record
        self._items: collections.deque[bytes] = collections.deque()
        self._head = _QUEUE_HEADER.size
        self._tail = _QUEUE_HEADER.size
        self._unsynced = 0
        self.recovered = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".compact")  # left by a crash in the middle of a compaction
        self._fd = self._open(path)
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    @staticmethod
    def _open(path: str) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise QueueError(f"cannot open queue_file {path!r}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise QueueError(f"queue_file {path!r} is in use by another process") from None
            raise QueueError(f"cannot lock queue_file {path!r}: {_reason(exc)}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise QueueError(f"queue_file {path!r} is not a regular file")
        return fd

    def _read(self, offset: int, size: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(self._fd, min(size, 1 << 24), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _write_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            self._reset()
            return
        if size < _QUEUE_HEADER.size:
            raise QueueError(f"queue_file {self.path!r} is too short ({size} bytes) to be a queue")
        magic, version, _, head, _ = _QUEUE_HEADER.unpack(self._read(0, _QUEUE_HEADER.size))
        if magic != _QUEUE_MAGIC:
            raise QueueError(
                f"queue_file {self.path!r} is not a pyaudisp-remote queue (an auditpy spool)"
            )
        if version != _QUEUE_VERSION:
            raise QueueError(f"queue_file {self.path!r} has unsupported version {version}")
        if head < _QUEUE_HEADER.size:
            raise QueueError(f"queue_file {self.path!r} has a corrupt head offset {head}")
        if head >= size:
            self._reset()  # everything was acknowledged; the truncate happened first
            return
        data = self._read(head, size - head)
        offset = 0
        items = self._items
        record_unpack = _RECORD.unpack_from
        while len(data) - offset >= _RECORD.size:
            length, crc = record_unpack(data, offset)
            start = offset + _RECORD.size
            stop = start + length
            if length == 0 or length > self._max_record or stop > len(data):
                break
            payload = data[start:stop]
            if zlib.crc32(payload) != crc:
                break
            items.append(payload)
            offset = stop
        self._head = head
        self._tail = head + offset
        if self._tail < size:
            self._log(
                syslog.LOG_WARNING,
                f"queue_file {self.path!r}: dropping {size - self._tail} bytes of an "
                f"incomplete or corrupt record at offset {self._tail}",
            )
            os.ftruncate(self._fd, self._tail)
            os.fsync(self._fd)
        if not items:
            self._reset()
        self.recovered = len(items)

    def _reset(self) -> None:
        """Empty file: truncate before rewriting the head, so a crash in between can
        never make acknowledged records live again."""
        os.ftruncate(self._fd, _QUEUE_HEADER.size)
        self._write_all(
            _QUEUE_HEADER.pack(_QUEUE_MAGIC, _QUEUE_VERSION, 0, _QUEUE_HEADER.size, 0), 0
        )
        self._head = self._tail = _QUEUE_HEADER.size

    def __len__(self) -> int:
        return len(self._items)

    @property
    def sendable(self) -> int:
        return len(self._items) - self._unsynced

    @property
    def unsynced(self) -> int:
        return self._unsynced

    def get(self, index: int) -> bytes:
        return self._items[index]

    def append_many(self, records: list[bytes]) -> None:
        if not records:
            return
        pack = _RECORD.pack
        crc32 = zlib.crc32
        data = b"".join([pack(len(r), crc32(r)) + r for r in records])
        try:
            self._write_all(data, self._tail)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._tail)
            raise QueueError(
                f"cannot append {len(records)} records to queue_file {self.path!r}: "
                f"{_reason(exc)}"
            ) from None
        self._tail += len(data)
        self._items.extend(records)
        self._unsynced += len(records)

    def sync(self) -> None:
        if not self._unsynced:
            return
        self._unsynced = 0  # even on failure: retrying cannot make them more durable
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise QueueError(f"cannot fsync queue_file {self.path!r}: {_reason(exc)}") from None

    def pop_front(self, count: int) -> None:
        items = self._items
        count = min(count, len(items) - self._unsynced)
        if count <= 0:
            return
        head = self._head
        size = _RECORD.size
        for _ in range(count):
            head += size + len(items.popleft())
        self._head = head
        try:
            if not items:
                self._reset()
            elif head - _QUEUE_HEADER.size >= COMPACT_BYTES and head - _QUEUE_HEADER.size > (
                self._tail - head
            ):
                self._compact()
            else:
                os.pwrite(self._fd, _HEAD_FIELD.pack(head), _HEAD_OFFSET)
        except OSError as exc:
            raise QueueError(
                f"cannot record acknowledged records in queue_file {self.path!r}: "
                f"{_reason(exc)}"
            ) from None

    def _compact(self) -> None:
        """Copy the live records to a new file and rename it over the old one: at every
        instant the path names a complete queue."""
        live = self._read(self._head, self._tail - self._head)
        temp = self.path + ".compact"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = _QUEUE_HEADER.pack(_QUEUE_MAGIC, _QUEUE_VERSION, 0, _QUEUE_HEADER.size, 0)
            old_fd, self._fd = self._fd, fd
            try:
                self._write_all(header + live, 0)
                os.fsync(fd)
                os.rename(temp, self.path)
            except BaseException:
                self._fd = old_fd
                raise
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.close(old_fd)
        _fsync_dir(os.path.dirname(self.path) or ".")
        self._head = _QUEUE_HEADER.size
        self._tail = self._head + len(live)
        self._unsynced = 0

    def close(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
