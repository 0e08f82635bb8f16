"""The write-ahead log of ``flatcoat serve``: every acknowledged write, fsynced before the reply.

Layout: the log is the file ``log`` in a directory beside the served index
(``PATH.wal/``; outside ``PATH``, which every save replaces whole). The file
opens with the 8-byte magic ``b"FCWAL01\\n"``, then records, each::

    u32 length      (little-endian; of the payload)
    u32 crc32       (zlib.crc32 of the payload)
    payload         u32 header length, a UTF-8 JSON header, then the raw data

The header says the operation (``add``, ``upsert``, ``remove``), the ids
actually used (automatic ids included), the texts or the attributes /
metadata, and for vectors their ``shape``; the data is those vectors as
little-endian float32, C order (exactly what the index stores: it converts
every input to float32 first).

Replay (:meth:`WriteAheadLog.replay`) reads records in order. A torn tail (a
record header or payload cut short by a crash, a zero-filled tail, or a last
record whose CRC does not match) is dropped and the file truncated there; a
record that fails its check with more data after it is corruption, raised as
:class:`WALCorruptError` naming the file and offset, never silently skipped.

Durability is group commit: :meth:`append` writes a record (no fsync) and
returns its sequence number; :meth:`sync` returns once that record is on
disk. Concurrent callers share one fsync: the first to arrive fsyncs
everything appended so far, the others wait for it and find their record
already covered. :meth:`rotate` starts an empty log after a snapshot: a new
file written and fsynced beside the old one, renamed over it, then the
directory fsynced.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["WriteAheadLog", "WALCorruptError", "Record", "MAGIC", "LOG_NAME"]

MAGIC = b"FCWAL01\n"
LOG_NAME = "log"
_RECORD = struct.Struct("<II")  # payload length, crc32
_U32 = struct.Struct("<I")
_MAX_RECORD = 1 << 31  # a length above this is not a record flatcoat wrote
OPS = ("add", "upsert", "remove")


class WALCorruptError(ValueError):
    """A log record in the middle of the file fails its length or CRC check."""


@dataclass
class Record:
    """One logged write: ``op`` (add, upsert, remove), ``ids``, and per op ``vectors`` (float32
    (n, dim)), ``texts``, ``attributes`` (an index's) or ``metadata`` (a Retriever's)."""

    op: str
    ids: List[Any]
    vectors: Optional[np.ndarray] = None
    texts: Optional[List[str]] = None
    attributes: Any = None
    metadata: Any = None

    def encode(self) -> bytes:
        if self.op not in OPS:
            raise ValueError(f"op: expected one of {OPS}, got {self.op!r}")
        header: Dict[str, Any] = {"op": self.op, "ids": self.ids}
        data = b""
        if self.vectors is not None:
            v = np.ascontiguousarray(self.vectors, dtype="<f4")
            header["shape"] = list(v.shape)
            data = v.tobytes()
        for name in ("texts", "attributes", "metadata"):
            value = getattr(self, name)
            if value is not None:
                header[name] = value
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        payload = _U32.pack(len(head)) + head + data
        return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> "Record":
        (head_len,) = _U32.unpack_from(payload, 0)
        header = json.loads(payload[4 : 4 + head_len].decode())
        vectors = None
        if "shape" in header:
            shape = tuple(int(s) for s in header["shape"])
            vectors = np.frombuffer(payload, dtype="<f4", offset=4 + head_len).reshape(shape).astype(np.float32)
        return cls(op=header["op"], ids=header["ids"], vectors=vectors, texts=header.get("texts"),
                   attributes=header.get("attributes"), metadata=header.get("metadata"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_empty(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.flush()
        os.fsync(f.fileno())


class WriteAheadLog:
    """The append-only log in ``directory`` (created if absent). Call :meth:`replay` once before
    the first :meth:`append`: it also drops a torn tail so that new records follow good ones."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_dir(self.directory.parent)
        if not self.path.exists():
            tmp = self.directory / (LOG_NAME + ".new")
            _write_empty(tmp)
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
        self._fd: Optional[int] = None
        self._lock = threading.Lock()
        self._synced_cond = threading.Condition(self._lock)
        self._appended = 0   # sequence number of the last record written
        self._synced = 0     # ... and of the last one known to be on disk
        self._flushing = False
        self._records = 0    # records in the current file (replayed + appended)
        self.fsyncs = 0      # fsync calls made for sync() (group commit shares them)
        self.dropped_bytes = 0  # bytes of a torn tail dropped by replay()

    # ------------------------------------------------------------------ reading
    def replay(self) -> List[Record]:
        """The logged records in order; then the log is open for appending.

        A torn tail is dropped (the file is truncated after the last good
        record); a bad record followed by more data raises
        :class:`WALCorruptError` with the file and offset.
        """
        data = self.path.read_bytes()
        records: List[Record] = []
        if not data.startswith(MAGIC):
            if not MAGIC.startswith(data):
                raise WALCorruptError(f"{self.path}: offset 0: not a flatcoat write-ahead log (bad magic)")
            good = 0  # a crash while the file was created: rewritten below
        else:
            good = self._scan(data, records)
        fd = os.open(self.path, os.O_WRONLY)
        if good == 0:
            os.ftruncate(fd, 0)
            os.pwrite(fd, MAGIC, 0)
            good = len(MAGIC)
        elif good < len(data):
            os.ftruncate(fd, good)
        if good != len(data):
            os.fsync(fd)
        os.lseek(fd, good, os.SEEK_SET)
        self.dropped_bytes = max(0, len(data) - good)
        self._fd = fd
        self._records = len(records)
        return records

    def _scan(self, data: bytes, records: List[Record]) -> int:
        """Decodes records after the magic into ``records``; returns the offset after the last good one."""
        offset = len(MAGIC)
        while offset < len(data):
            if len(data) - offset < _RECORD.size:
                break  # a torn record header
            length, crc = _RECORD.unpack_from(data, offset)
            end = offset + _RECORD.size + length
            if length == 0 or length > _MAX_RECORD:
                if not any(data[offset:]):
                    break  # a zero-filled tail: space allocated, data never written
                raise WALCorruptError(f"{self.path}: offset {offset}: invalid record length {length}")
            if end > len(data):
                break  # a torn payload
            payload = data[offset + _RECORD.size : end]
            if zlib.crc32(payload) != crc:
                if end == len(data):
                    break  # the last record, torn
                raise WALCorruptError(f"{self.path}: offset {offset}: record fails its CRC-32 check "
                                      f"({len(data) - end} more bytes follow, so this is not a torn tail)")
            try:
                records.append(Record.decode(payload))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error) as exc:
                raise WALCorruptError(f"{self.path}: offset {offset}: unreadable record ({exc})") from None
            offset = end
        return offset

    @property
    def records(self) -> int:
        """Records in the current log file (those replayed plus those appended since)."""
        return self._records

    def size(self) -> int:
        """Bytes of the current log file."""
        return os.fstat(self._fd).st_size if self._fd is not None else self.path.stat().st_size

    # ------------------------------------------------------------------ writing
    def _require_open(self) -> int:
        if self._fd is None:
            raise RuntimeError("the write-ahead log is not open: call replay() first")
        return self._fd

    def append(self, record: Record) -> int:
        """Writes ``record`` (no fsync) and returns its sequence number for :meth:`sync`.
        Callers append in the order they applied their writes (one thread)."""
        blob = record.encode()
        with self._lock:
            fd = self._require_open()
            view = memoryview(blob)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self._appended += 1
            self._records += 1
            return self._appended

    def sync(self, seq: Optional[int] = None) -> None:
        """Returns once record ``seq`` (default: every record appended so far) is on disk.

        Group commit: one caller fsyncs for everyone waiting; a caller whose
        record was covered by an fsync that started after its append returns
        without one.
        """
        with self._lock:
            target = self._appended if seq is None else seq
            while self._synced < target:
                if self._flushing:
                    self._synced_cond.wait()
                    continue
                self._flushing = True
                upto, fd = self._appended, self._require_open()
                self._lock.release()
                try:
                    os.fsync(fd)
                finally:
                    self._lock.acquire()
                    self._flushing = False
                    self._synced_cond.notify_all()
                self.fsyncs += 1
                self._synced = max(self._synced, upto)

    def rotate(self) -> None:
        """Starts an empty log: call after a snapshot holds every record appended so far.

        The new file is written and fsynced beside the old one, renamed over it,
        and the directory fsynced: a crash leaves either the old log (replayed
        onto the snapshot: harmless, replay is idempotent) or the new one.
        """
        with self._lock:
            while self._flushing:
                self._synced_cond.wait()
            tmp = self.directory / (LOG_NAME + ".new")
            _write_empty(tmp)
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
            fd = os.open(self.path, os.O_WRONLY)
            os.lseek(fd, 0, os.SEEK_END)
            old, self._fd = self._fd, fd
            if old is not None:
                os.close(old)
            self._synced = self._appended  # the snapshot holds them all
            self._records = 0
            self._synced_cond.notify_all()

    def close(self) -> None:
        with self._lock:
            while self._flushing:
                self._synced_cond.wait()
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
