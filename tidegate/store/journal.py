"""The write-ahead journal: an append-only file of records, and a mark of how far it is done.

Every batch the writer takes is appended here (and fsynced) before it is committed to the
database; once the commit succeeds, the done mark moves past it. So a record is, at every
instant, either still in the writer's memory, or in the journal beyond the done mark, or
committed (and possibly also still beyond the mark, if the process died between the commit and
the mark: replaying it then inserts nothing, since every write is idempotent).

Files in the journal folder:
- ``journal.jsonl``: one JSON record per line, appended only;
- ``journal.done``: ``{"offset": N}``, the byte offset up to which every record is committed,
  replaced atomically (write, then rename);
- ``rejected.jsonl``: the dead-letter file: records the database refused for what they hold
  (not for being down), and records that could not be journaled at all, each with the error
  and its session; kept for an operator, never retried;
- ``journal.lock``: held (flock) while a writer owns the folder. Processes sharing a data
  folder take slots of their own (``journal.1``...) and adopt what dead ones left behind;
- ``node.id``: the node id of the process that holds (or last held) the slot; a process that
  takes a slot, or adopts one, knows from it which node is gone.

When everything is done and the file has grown past ``compact_bytes``, the mark is reset to 0
and then the file is truncated (a crash between the two replays committed records: harmless).

This class does blocking file I/O: the writer calls it from a worker thread, one call at a time.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from .config import ConfigError

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
DONE_FILE = "journal.done"
REJECTED_FILE = "rejected.jsonl"
LOCK_FILE = "journal.lock"
NODE_FILE = "node.id"


MAX_SLOTS = 16
ADOPT_CHUNK_ENTRIES = 10_000


MAX_TEXT_CHARS = 65_536  # of an entry kept as text in the dead-letter file


class JournalBusyError(ConfigError):
    """The journal folder is held (flock) by another live process."""


class UnjournalableError(ValueError):
    """A record holds a value the journal's JSON cannot (an integer outside 64 bits, say)."""


def encode_entry(entry: dict[str, Any]) -> bytes:
    """One journal line for ``entry``; raises UnjournalableError naming what JSON refused."""
    try:
        return orjson.dumps(entry) + b"\n"
    except (TypeError, ValueError) as e:
        raise UnjournalableError(f"cannot be journaled: {e}") from None


def slot_folder(base: Path, slot: int) -> Path:
    """Slot 0 is ``base`` (``data_dir/journal``); others are ``journal.1``, ``journal.2``..."""
    return base if slot == 0 else base.with_name(f"{base.name}.{slot}")


def open_slot(base: Path, **kw: Any) -> Journal:
    """Open the first journal slot no other process holds. One process per data folder uses
    ``base`` itself; processes that share a data folder (e.g. its prepared models) each get a
    slot of their own."""
    for slot in range(MAX_SLOTS):
        journal = Journal(slot_folder(base, slot), **kw)
        try:
            journal.open()
        except JournalBusyError:
            continue
        return journal
    raise ConfigError(
        f"all {MAX_SLOTS} journal slots beside {base} are held by running processes; give "
        "this process its own data_dir"
    )


def adopt_orphans(own: Journal, base: Path, lost_nodes: list[str] | None = None) -> int:
    """Move what other slots' journals still hold into ``own``, for slots no live process
    holds (their process died or stopped with the database away). Appended first, marked done
    after: a crash in between duplicates entries, which replay absorbs. Returns how many.
    The node ids those slots name are added to ``lost_nodes`` (their processes are gone)."""
    adopted = 0
    for slot in range(MAX_SLOTS):
        folder = slot_folder(base, slot)
        if folder == own.folder or not (folder / JOURNAL_FILE).exists():
            continue
        other = Journal(folder, fsync=own.fsync)
        try:
            other.open()
        except JournalBusyError:
            continue
        try:
            node = other.node_id()
            if node and lost_nodes is not None:
                lost_nodes.append(node)
            while other.pending:
                entries, end = other.read_pending(ADOPT_CHUNK_ENTRIES)
                if not entries:
                    break
                good = [e for e in entries if e is not None]
                if good:
                    own.append(good)
                other.mark_done(end, len(entries))
                adopted += len(good)
        finally:
            other.close()
    if adopted:
        log.warning("journal: adopted %d records left by a process that is gone", adopted)
    return adopted


class Journal:
    """Append-only record journal with a done mark. Not thread-safe: one caller at a time."""

    def __init__(self, folder: Path, *, fsync: bool = True, compact_bytes: int = 16 << 20) -> None:
        self.folder = folder
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        self.path = folder / JOURNAL_FILE
        self.done_path = folder / DONE_FILE
        self.rejected_path = folder / REJECTED_FILE
        self.size_bytes = 0
        self.done_offset = 0
        self.pending = 0  # records beyond the done mark
        self.torn_bytes = 0  # bytes of an incomplete last line cut off at open
        self.compactions = 0
        self.rejected = 0
        self._fh: Any = None
        self._lock_fd: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> int:
        """Take the folder, cut a torn last line, count what is pending; returns that count."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusyError(
                f"journal folder {self.folder} is held by another process"
            ) from None
        self._lock_fd = fd
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open for the writer's lifetime
        self.size_bytes = self._fh.seek(0, os.SEEK_END)
        self.done_offset = min(self._read_done(), self.size_bytes)
        self._cut_torn_tail()
        self.pending = sum(1 for _ in self._lines(self.done_offset, None))
        return self.pending

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def node_id(self) -> str | None:
        """The node id written in this slot (by its holder, or its last holder)."""
        try:
            text = (self.folder / NODE_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def set_node_id(self, node_id: str) -> None:
        """Name this process as the slot's holder (written, fsynced, then renamed)."""
        path = self.folder / NODE_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(node_id + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- writing --------------------------------------------------------------------------------

    def append(self, entries: list[dict[str, Any]]) -> int:
        """Append entries (one line each), flush and fsync; returns the new end offset.
        Raises UnjournalableError, appending nothing, if an entry cannot be encoded."""
        return self.append_lines([encode_entry(e) for e in entries])

    def append_lines(self, lines: list[bytes]) -> int:
        """Append lines made by :func:`encode_entry`, flush and fsync; the new end offset."""
        data = b"".join(lines)
        fh = self._fh
        fh.write(data)
        fh.flush()
        if self.fsync:
            os.fsync(fh.fileno())
        self.size_bytes += len(data)
        self.pending += len(lines)
        return self.size_bytes

    def mark_done(self, offset: int, count: int) -> None:
        """Everything before ``offset`` (``count`` more records) is committed."""
        self._write_done(offset)
        self.done_offset = offset
        self.pending = max(0, self.pending - count)
        if self.done_offset == self.size_bytes and self.size_bytes >= self.compact_bytes:
            self._compact()

    def quarantine(self, entry: dict[str, Any], error: str) -> None:
        """Keep a record that cannot be journaled or stored (the dead-letter file); it is never
        retried. An entry that JSON cannot hold is kept as its ``ascii()`` text instead."""
        head = {"error": error, "session_id": entry.get("session_id"), "kind": entry.get("kind")}
        as_text = ascii(entry)[:MAX_TEXT_CHARS]
        try:
            line = orjson.dumps({**head, "entry": entry})
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            try:
                line = orjson.dumps({**head, "entry_text": as_text})
            except (TypeError, ValueError):
                text = {k: ascii(v)[:MAX_TEXT_CHARS] for k, v in head.items()}
                line = orjson.dumps({**text, "entry_text": as_text})
        with open(self.rejected_path, "ab") as fh:
            fh.write(line + b"\n")
        self.rejected += 1

    # -- reading --------------------------------------------------------------------------------

    def read_pending(self, max_entries: int) -> tuple[list[dict[str, Any] | None], int]:
        """Up to ``max_entries`` entries after the done mark (None for a line that does not
        parse), and the offset just after the last one."""
        out: list[dict[str, Any] | None] = []
        end = self.done_offset
        for line, line_end in self._lines(self.done_offset, max_entries):
            try:
                entry = orjson.loads(line)
                out.append(entry if isinstance(entry, dict) else None)
            except orjson.JSONDecodeError:
                out.append(None)
            end = line_end
        return out, end

    def _lines(self, offset: int, limit: int | None) -> Any:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            pos = offset
            for n, line in enumerate(fh):
                if limit is not None and n >= limit:
                    return
                if not line.endswith(b"\n"):
                    return  # a torn line is not a record
                pos += len(line)
                yield line, pos

    # -- internals ------------------------------------------------------------------------------

    def _read_done(self) -> int:
        try:
            data = orjson.loads(self.done_path.read_bytes())
            return int(data["offset"])
        except FileNotFoundError:
            return 0
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("journal: %s is unreadable; replaying the whole journal", self.done_path)
            return 0

    def _write_done(self, offset: int) -> None:
        tmp = self.done_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"offset": offset}))
        os.replace(tmp, self.done_path)

    def _cut_torn_tail(self) -> None:
        """A crash in the middle of an append leaves a last line without its newline: cut it."""
        if self.size_bytes == 0:
            return
        fh = self._fh
        back = min(self.size_bytes, 1 << 20)
        fh.seek(self.size_bytes - back)
        tail = fh.read(back)
        if tail.endswith(b"\n"):
            return
        keep = self.size_bytes - back + tail.rfind(b"\n") + 1
        self.torn_bytes = self.size_bytes - keep
        log.warning("journal: cutting a torn last line of %d bytes", self.torn_bytes)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        self.size_bytes = keep
        self.done_offset = min(self.done_offset, keep)

    def _compact(self) -> None:
        self._write_done(0)
        self._fh.truncate(0)
        self._fh.flush()
        self.size_bytes = 0
        self.done_offset = 0
        self.pending = 0
        self.compactions += 1

    def stats(self) -> dict[str, Any]:
        return {
            "bytes": self.size_bytes,
            "pending": self.pending,
            "done_offset": self.done_offset,
            "compactions": self.compactions,
            "rejected": self.rejected,
            "torn_bytes": self.torn_bytes,
        }
