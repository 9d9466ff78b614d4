"""The SQLite engine's journal: append-only files, one per receiver process, beside the database.

A receiver never waits for SQLite's write lock: it appends the notifications of one group
commit as records to its own file (`<database>-incoming/<pid>-<start>-<seq>.journal`) and
fdatasyncs once. The decider reads every file from the offset recorded in the database and
moves what it decides into the `notifications` table, advancing the offset in the same
transaction. A file is deleted once it is consumed and its writer has moved on (a writer moves
to a new file every ROTATE_BYTES, or at its first append after ROTATE_SECONDS) or exited.

A record is `<u32 payload length><u32 crc32 of payload>` then the payload: one line of JSON
metadata (id, received_at, receiver, status, group_key, alert_count, truncated_alerts), a
newline, and the body as received. A record cut short by a crash fails its length or CRC
check and was never acknowledged: the reader stops before it.

Files are filled with zeros ahead of the writer (a zero length ends the records), so that an
acknowledged append costs one data flush: appending past the end of a file would also make
fdatasync commit the new file size to the filesystem's journal (as PostgreSQL does for its
WAL segments).
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct("<II")
ROTATE_BYTES = 64 * 1024 * 1024
# A writer also moves to a new file at its first append after this long, so that a quiet
# receiver's file, once decided, is deleted too: raw bodies do not linger in the journal.
ROTATE_SECONDS = 3600.0
PREALLOCATE_BYTES = 16 * 1024 * 1024
# A write this big just extends the file: its data flush costs far more than the file size's
# commit, and zero-filling ahead of it would double what is written.
BIG_WRITE = 256 * 1024
_ZEROS = bytes(1024 * 1024)
_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.journal$")


@dataclass(frozen=True)
class Record:
    file: str
    end: int  # offset just past this record: the file's checkpoint once it is decided
    id: int
    received_at: float
    receiver: str
    status: str
    group_key: str
    alert_count: int
    truncated_alerts: int
    body: str


def _process_start(pid: int) -> int | None:
    """The kernel's start time of a process (tells a live writer from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_alive(name: str) -> bool:
    match = _NAME.match(name)
    if not match:
        return False
    pid, start = int(match.group(1)), int(match.group(2))
    if pid == os.getpid():
        return True
    actual = _process_start(pid)
    if actual is None:
        # No /proc: only whether some process has this pid.
        try:
            os.kill(pid, 0)
            return start == 0
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return actual == start


class JournalWriter:
    """This process's journal file; thread-safe, reopened after fork."""

    def __init__(self, folder: Path, reserve_ids: Callable[[int], int], id_block: int = 1000):
        self.folder = folder
        self.reserve_ids = reserve_ids  # count -> first id of a fresh block of `count` ids
        self.id_block = id_block
        self._lock = threading.Lock()
        self._pid = 0
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        self._allocated = 0
        self._opened_at = 0.0
        self._next_id = 0
        self._last_id = -1

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        start = _process_start(pid) or 0
        name = f"{pid}-{start}-{self._seq}.journal"
        self._fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = 0
        self._opened_at = time.monotonic()
        # Zeros are written ahead only once a small append needs them (`append`): bodies of
        # BIG_WRITE and more would only overwrite them, at twice the writing.
        self._allocated = os.fstat(self._fd).st_size
        # The new name must survive a power cut too, not only the data written to it.
        directory = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _preallocate(self, needed: int) -> None:
        """Zeros up to `needed` bytes plus room ahead, made durable once (size included)."""
        if self._allocated >= needed:
            return
        target = needed + PREALLOCATE_BYTES
        while self._allocated < target:
            chunk = min(len(_ZEROS), target - self._allocated)
            self._allocated += os.pwrite(self._fd, _ZEROS[:chunk], self._allocated)
        os.fsync(self._fd)

    def _take_ids(self, count: int) -> list[int]:
        ids = []
        while len(ids) < count:
            if self._next_id > self._last_id:
                block = max(self.id_block, count - len(ids))
                self._next_id = self.reserve_ids(block)
                self._last_id = self._next_id + block - 1
            take = min(count - len(ids), self._last_id - self._next_id + 1)
            ids.extend(range(self._next_id, self._next_id + take))
            self._next_id += take
        return ids

    def forget_ids(self) -> None:
        """Reserve a fresh block for the next append (after ids were changed under us)."""
        with self._lock:
            self._next_id, self._last_id = 0, -1

    def append(self, entries: list[dict], bodies: list[str | bytes]) -> list[int]:
        """Write these notifications durably; returns their ids. OSError if not written."""
        with self._lock:
            if self._pid != os.getpid():  # forked: never share a parent's file or ids
                self._fd, self._pid, self._seq = None, os.getpid(), 0
                self._next_id, self._last_id = 0, -1
            if (self._fd is None or self._size > ROTATE_BYTES
                    or (self._size and time.monotonic() - self._opened_at > ROTATE_SECONDS)):
                if self._fd is not None:
                    os.close(self._fd)
                    self._seq += 1
                self._open()
            ids = self._take_ids(len(entries))
            chunks = []
            for notification_id, meta, body in zip(ids, entries, bodies, strict=True):
                payload = (json.dumps({"id": notification_id, **meta}, separators=(",", ":"))
                           .encode() + b"\n" + (body if isinstance(body, bytes) else body.encode()))
                chunks.append(HEADER.pack(len(payload), zlib.crc32(payload)))
                chunks.append(payload)
            data = b"".join(chunks)
            try:
                if len(data) < BIG_WRITE:
                    self._preallocate(self._size + len(data) + HEADER.size)
                written = 0
                while written < len(data):
                    written += os.pwrite(self._fd, data[written:], self._size + written)
                os.fdatasync(self._fd)
            except OSError:
                # Never leave a torn record in front of the next one.
                try:
                    os.pwrite(self._fd, bytes(min(len(data), len(_ZEROS))), self._size)
                except OSError:
                    pass
                raise
            self._size += len(data)
            self._allocated = max(self._allocated, self._size)
            return ids


def journal_names(folder: Path) -> list[str]:
    try:
        names = [e.name for e in os.scandir(folder) if _NAME.match(e.name)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda n: tuple(int(x) for x in _NAME.match(n).groups()))


def read_records(path: Path, offset: int, limit: int, max_alerts: int) -> Iterator[Record]:
    """Whole records after `offset`, at most `limit` of them and `max_alerts` alerts (but at
    least one); stops quietly at a record still being written or cut short."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with handle:
        handle.seek(offset)
        alerts = taken = 0
        while taken < limit:
            header = handle.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            length, crc = HEADER.unpack(header)
            if length == 0:  # the zeros ahead of the writer
                return
            payload = handle.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            meta_line, _, body = payload.partition(b"\n")
            meta = json.loads(meta_line)
            if taken and alerts + meta["alert_count"] > max_alerts:
                return
            offset += HEADER.size + length
            taken += 1
            alerts += meta["alert_count"]
            yield Record(path.name, offset, meta["id"], meta["received_at"], meta["receiver"],
                         meta["status"], meta["group_key"], meta["alert_count"],
                         meta["truncated_alerts"], body.decode())


def scan(path: Path, offset: int) -> tuple[int, int, float | None, int]:
    """(records, alerts, oldest received_at, offset of the end of the last whole record)
    after `offset`, reading only each record's metadata."""
    records = alerts = 0
    oldest = None
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0, 0, None, offset
    with handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(offset)
        while offset + HEADER.size <= size:
            length, _crc = HEADER.unpack(handle.read(HEADER.size))
            if length == 0 or offset + HEADER.size + length > size:
                break
            meta_line = handle.readline(64 * 1024)
            try:
                meta = json.loads(meta_line)
            except ValueError:
                break
            records += 1
            alerts += meta["alert_count"]
            oldest = meta["received_at"] if oldest is None else min(oldest, meta["received_at"])
            offset += HEADER.size + length
            handle.seek(offset)
    return records, alerts, oldest, offset


def record_follows(path: Path, offset: int) -> bool:
    """Whether a record starts at `offset` (at least its header is written)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            header = handle.read(HEADER.size)
    except OSError:
        return False
    return len(header) == HEADER.size and HEADER.unpack(header)[0] != 0
