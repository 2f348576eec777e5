"""The writer: records in through a bounded queue, batches out to the database, and the
journal in between so that nothing is lost while the database is away.

``record()`` is all the media path ever calls: it appends to a bounded queue
(``db_queue_max_records``, policy ``reject``: a record offered to a full queue is refused and
counted in ``queue.rejected``; the caller never waits). One task on the event loop, owned by
the :class:`~tidegate.server.runtime.Runtime`, runs :meth:`RecordWriter.run`; it only takes
batches off the queue and hands them to the database thread (:mod:`.worker`), where everything
else happens, so that none of it runs on the event loop:

1. take everything queued (at most ``db_batch_max_records``): batches form by themselves
   while the previous one commits;
2. on the database thread: turn the records into journal entries, append them to the journal
   and fsync;
3. commit them in one transaction (bounded by ``db_timeout_s``), then move the journal's done
   mark; the outcome comes back to the loop through ``call_soon_threadsafe``.

If the commit fails because the database is unreachable (connection refused or lost, timeout,
SQLite locked), the writer marks it unavailable and keeps journaling new batches; every
``db_retry_s`` it replays the journal from the done mark, in order, in batches, and once that
succeeds it is available again. A failure caused by a record itself (a constraint, bad data) is
not retried: the batch is committed record by record and each refused record is moved to the
journal's ``rejected.jsonl`` (the dead-letter file) and counted.

The writer never stops for one record: a record that cannot be journaled (a value the journal's
JSON cannot hold) goes to the dead-letter file at step 2, logged with its session and counted
(``quarantined["journal"]``), and the rest of its batch goes on. If the loop fails anyway (the
journal's disk, a bug), what it held is dead-lettered, ``running`` turns false (``/readyz``
answers 503) and the loop starts again after ``db_retry_s``, its journal reopened
(``restarts``). :meth:`RecordWriter.record_journaled` waits until one record is in the journal:
the records API answers 202 "journaled" only after it returned True.

Each process has a node id (random, per start). It is stamped on every session it starts
(``sessions.node_id``) and kept in its journal slot (``node.id``). At start-up, the node ids
left in slots that no live process holds (this slot's predecessor, and orphaned slots) are
journaled as :class:`~.records.NodeLost` records: applied after everything those nodes
journaled, they close the sessions those nodes left open (``end_reason`` ``node_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from tidegate.pipelines import records as r
from tidegate.protocol import BoundedBuffer, Overflow, Push

from . import engine as db_engine
from . import store
from .config import StoreSettings
from .journal import Journal, UnjournalableError, adopt_orphans, encode_entry, open_slot
from .worker import DbThread

log = logging.getLogger(__name__)
REFUSAL_LOG_INTERVAL_S = 10.0
JOURNAL_DIR = "journal"
NODE_ID_BYTES = 8


def is_unavailable(e: BaseException) -> bool:
    """True when ``e`` says the database cannot be reached (retry later), False when it
    refused what we sent (retrying the same thing would fail again)."""
    if isinstance(e, OSError | TimeoutError | ConnectionError | sa_exc.TimeoutError):
        return True
    if isinstance(e, sa_exc.DBAPIError):
        if e.connection_invalidated:
            return True
        if isinstance(e, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        orig = getattr(e, "orig", None)
        return orig is not None and type(orig).__name__ in _UNAVAILABLE_DRIVER_ERRORS
    if isinstance(e, sa_exc.DisconnectionError):
        return True
    name = type(e).__name__
    return name in _UNAVAILABLE_DRIVER_ERRORS or "Connection" in name


_UNAVAILABLE_DRIVER_ERRORS = frozenset(
    {
        "CannotConnectNowError",
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "ConnectionRejectionError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "CrashShutdownError",
        "InterfaceError",
        "InternalClientError",
    }
)


class RecordWriter:
    """A :class:`~tidegate.pipelines.records.Recorder` backed by a database and a journal.

    ``engine`` is the event loop's engine, for the records API's reads; the writer commits
    through an engine of its own that lives on the database thread.
    """

    def __init__(
        self,
        url: URL,
        journal_dir: Path,
        *,
        queue_max_records: int = 10_000,
        batch_max_records: int = 500,
        timeout_s: float = 5.0,
        retry_s: float = 1.0,
        journal_fsync: bool = True,
        journal_compact_bytes: int = 16 << 20,
        handoff_max_jobs: int = 2,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.batch_max_records = batch_max_records
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.migrate = migrate
        self.node_id = secrets.token_hex(NODE_ID_BYTES)
        self.lost_nodes: list[str] = []
        self.queue: BoundedBuffer[r.Record] = BoundedBuffer(
            "db.records", max_items=queue_max_records, policy=Overflow.REJECT
        )
        self.journal = Journal(
            journal_dir, fsync=journal_fsync, compact_bytes=journal_compact_bytes
        )
        self.engine: AsyncEngine = db_engine.create_engine(url, timeout_s=timeout_s)
        self.db = DbThread("db-writer", max_jobs=handoff_max_jobs)
        self._db_engine: AsyncEngine | sa.Engine | None = (
            None  # created on, used from, the db thread
        )
        self.available = True
        self.schema_ready = not migrate
        self.last_error: str | None = None
        self.committed = 0
        self.replayed = 0
        self.batches = 0
        self.failures = 0
        self.outages = 0
        #: records dead-lettered, by the stage that could not take them
        self.quarantined = {"journal": 0, "database": 0, "writer": 0}
        self.restarts = 0
        self._failed = False  # the loop failed and has not started again yet
        #: record id -> future resolved once that record is journaled (record_journaled)
        self._journal_waiters: dict[str, asyncio.Future[bool]] = {}
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._next_try_s = 0.0
        self._last_refusal_log_s = 0.0
        self._opened = False

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> RecordWriter:
        return cls(
            db_engine.database_url(settings),
            settings.data_dir / JOURNAL_DIR,
            queue_max_records=settings.db_queue_max_records,
            batch_max_records=settings.db_batch_max_records,
            timeout_s=settings.db_timeout_s,
            retry_s=settings.db_retry_s,
            journal_fsync=settings.db_journal_fsync,
            journal_compact_bytes=settings.db_journal_compact_bytes,
            migrate=settings.db_migrate_on_start,
        )

    # -- the media path's side: never waits -----------------------------------------------------

    def record(self, rec: r.Record) -> bool:
        """Queue a record for the writer; False (counted) when the queue is full."""
        if self._stopping:
            self.queue.stats.rejected += 1
            return False
        if self.queue.push(rec) is Push.ACCEPTED:
            self._settled.clear()
            self._wake.set()
            return True
        now = time.monotonic()
        if now - self._last_refusal_log_s >= REFUSAL_LOG_INTERVAL_S:
            self._last_refusal_log_s = now
            log.warning(
                "db writer: queue full (%d records); refusing records (%d so far)",
                self.queue.max_items,
                self.queue.stats.rejected,
            )
        return False

    # -- the writer task (event loop side) ------------------------------------------------------

    async def open(self) -> None:
        """Start the database thread, open the journal (what an earlier process left in it is
        replayed by ``run``), journal the sweep of nodes that are gone, and try the migrations
        once; if the database is unavailable, the writer tries again before its first commit."""
        self.db.start()
        try:
            await self.db.call(self._t_open)
        except BaseException:
            await self.db.stop()  # e.g. every journal slot is held: no thread left behind
            raise
        self._opened = True
        if self.journal.pending:
            log.info("db writer: %d journaled records to replay", self.journal.pending)

    async def run(self) -> None:
        """The writer loop; returns after :meth:`close` once everything is journaled. It does
        not end on a failure: it logs it, dead-letters what it held, and starts again."""
        if not self._opened:
            await self.open()
        try:
            while True:
                try:
                    await self._loop()
                    return
                except Exception:
                    self._failed = True
                    log.exception(
                        "db writer: the writer loop failed; restarting in %.1f s", self.retry_s
                    )
                if self._stopping:
                    return
                await asyncio.sleep(self.retry_s)
                self._failed = not await self._restart()
        finally:
            self._stopped.set()
            for waiter in self._journal_waiters.values():
                if not waiter.done():
                    waiter.set_result(False)

    async def _loop(self) -> None:
        while True:
            if self.journal.pending and self._may_try():
                await self.db.call(self._t_replay)
            if not self.queue:
                if self.journal.pending == 0:
                    self._settled.set()
                if self._stopping:
                    return
                await self._wait()
                continue
            batch = [self.queue.pop() for _ in range(min(len(self.queue), self.batch_max_records))]
            try:
                journaled = await self.db.call(self._t_write, batch)
            except BaseException:
                self._journaled(batch, set())
                raise
            self._journaled(batch, journaled)

    def _journaled(self, batch: Sequence[r.Record], journaled: set[str]) -> None:
        """Tell whoever waits on a record of ``batch`` whether it is in the journal."""
        if not self._journal_waiters:
            return
        for rec in batch:
            waiter = self._journal_waiters.pop(rec.record_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(rec.record_id in journaled)

    @property
    def running(self) -> bool:
        """The writer takes records: opened, its loop not ended and not failed (``/readyz``)."""
        return self._opened and not self._failed and not self._stopped.is_set()

    async def _restart(self) -> bool:
        """Start again after a failure: a database thread that died is replaced, and the
        journal is reopened (its file handle may be what failed). False if that failed too."""
        self.restarts += 1
        try:
            if not self.db.running:
                await self.db.stop()
                self.db = DbThread(self.db.name, max_jobs=self.db.max_jobs)
                self._db_engine = None  # it belonged to the old thread's loop
                self.db.start()
            await self.db.call(self._t_reopen)
        except Exception:
            log.exception("db writer: restarting failed; trying again")
            return False
        log.warning("db writer: restarted (%d restarts so far)", self.restarts)
        return True

    async def record_journaled(self, rec: r.Record, timeout_s: float) -> bool:
        """Queue ``rec`` and wait until it is in the journal (fsynced when that is on): True
        then; False if it was refused, dead-lettered, or not journaled within ``timeout_s``
        (the writer is not running)."""
        waiter = asyncio.get_running_loop().create_future()
        self._journal_waiters[rec.record_id] = waiter
        try:
            if not self.record(rec):
                return False
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return False
        finally:
            self._journal_waiters.pop(rec.record_id, None)

    async def _wait(self) -> None:
        self._wake.clear()
        timeout = None
        if self.journal.pending:
            timeout = max(0.0, self._next_try_s - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _may_try(self) -> bool:
        return self.available or time.monotonic() >= self._next_try_s

    async def _commit(self, batch: Sequence[r.Record], entries: list[dict[str, Any]]) -> bool:
        """Commit ``batch`` (on the database thread); False if the database is unavailable."""
        return await self.db.call(self._t_commit, batch, entries)

    # -- on the database thread -----------------------------------------------------------------

    def _engine_here(self) -> AsyncEngine | sa.Engine:
        """The thread's engine: SQLite through the sync ``sqlite3`` driver (a third of
        aiosqlite's CPU per record), PostgreSQL through asyncpg on the thread's own loop."""
        if self._db_engine is None:
            if self.url.get_backend_name() == "sqlite":
                self._db_engine = db_engine.create_sync_engine(self.url, timeout_s=self.timeout_s)
            else:
                self._db_engine = db_engine.create_engine(
                    self.url, timeout_s=self.timeout_s, pool_size=1
                )
        return self._db_engine

    async def _t_apply(self, batch: Sequence[r.Record]) -> None:
        """Write ``batch`` in one transaction. Async: bounded by ``2 x db_timeout_s``; sync
        (SQLite): its busy timeout (``db_timeout_s``) bounds the wait on a lock."""
        engine = self._engine_here()
        if isinstance(engine, AsyncEngine):
            async with asyncio.timeout(self.timeout_s * 2):
                async with engine.begin() as conn:
                    await conn.run_sync(store.apply, batch)
        else:
            with engine.begin() as conn:
                store.apply(conn, batch)

    async def _t_upgrade(self) -> None:
        engine = self._engine_here()
        if isinstance(engine, AsyncEngine):
            async with asyncio.timeout(self.timeout_s * 2):
                await db_engine.upgrade(engine)
        else:
            db_engine.upgrade_sync(engine)

    async def _t_open(self) -> None:
        base, j = self.journal.folder, self.journal
        self.journal = open_slot(base, fsync=j.fsync, compact_bytes=j.compact_bytes)
        predecessor = self.journal.node_id()
        lost = [predecessor] if predecessor else []
        adopt_orphans(self.journal, base, lost_nodes=lost)
        self.journal.set_node_id(self.node_id)
        self.lost_nodes = [n for n in dict.fromkeys(lost) if n and n != self.node_id]
        if self.lost_nodes:
            log.warning(
                "db writer: closing the sessions left open by %d node(s) that are gone",
                len(self.lost_nodes),
            )
            self.journal.append(
                [r.to_entry(r.NodeLost(node_id=n, reason=r.NODE_LOST)) for n in self.lost_nodes]
            )
        if not self.schema_ready:
            await self._t_commit([], [])

    async def _t_write(self, batch: list[r.Record]) -> set[str]:
        """Journal ``batch`` and commit it; the ids of the records that are in the journal.
        A record the journal cannot hold is dead-lettered and the rest go on; if the append
        itself fails, the whole batch is dead-lettered and the failure raised."""
        batch = [self._stamped(rec) for rec in batch]
        kept: list[r.Record] = []
        entries: list[dict[str, Any]] = []
        lines: list[bytes] = []
        for rec in batch:
            entry = r.to_entry(rec)
            try:
                lines.append(encode_entry(entry))
            except UnjournalableError as e:
                self._quarantine(entry, str(e), "journal")
                continue
            kept.append(rec)
            entries.append(entry)
        if not kept:
            return set()
        older_pending = self.journal.pending > 0
        try:
            end = self.journal.append_lines(lines)
        except Exception as e:
            for entry in entries:
                self._quarantine(entry, f"the journal append failed: {e}", "writer")
            raise
        journaled = {rec.record_id for rec in kept}
        if older_pending or not self._may_try():
            return journaled  # in the journal; _t_replay commits it in order
        if await self._t_commit(kept, entries):
            self.journal.mark_done(end, len(kept))
        return journaled

    def _quarantine(self, entry: dict[str, Any], error: str, stage: str) -> None:
        """Dead-letter one record (logged with its session, counted by stage); never raises."""
        self.quarantined[stage] += 1
        log.error(
            "db writer: %s record %s of session %s quarantined (%s): %s",
            entry.get("kind"),
            entry.get("record_id"),
            entry.get("session_id"),
            stage,
            error[:500],
        )
        try:
            self.journal.quarantine(entry, error[:500])
        except Exception:
            log.exception("db writer: the dead-letter file could not be written")

    async def _t_reopen(self) -> None:
        self.journal.close()
        self.journal.open()

    def _stamped(self, rec: r.Record) -> r.Record:
        """A session started here is this node's (unless the record already names one)."""
        if isinstance(rec, r.SessionStarted) and not rec.node_id:
            return dataclasses.replace(rec, node_id=self.node_id)
        return rec

    async def _t_replay(self) -> None:
        """Commit what the journal holds beyond its done mark, oldest first."""
        while self.journal.pending and self._may_try():
            entries, end = self.journal.read_pending(self.batch_max_records)
            if not entries:
                return
            batch: list[r.Record] = []
            kept: list[dict[str, Any]] = []
            for entry in entries:
                try:
                    if entry is None:
                        raise r.RecordFormatError("a journal line that is not a JSON object")
                    batch.append(r.from_entry(entry))
                    kept.append(entry)
                except Exception as e:  # RecordFormatError, or whatever else a line holds
                    self._quarantine(entry or {}, f"cannot be replayed: {e}", "journal")
            if not await self._t_commit(batch, kept):
                return
            self.replayed += len(batch)
            self.journal.mark_done(end, len(entries))

    async def _t_commit(self, batch: Sequence[r.Record], entries: list[dict[str, Any]]) -> bool:
        try:
            if not self.schema_ready:
                await self._t_upgrade()
                self.schema_ready = True
            if batch:
                await self._t_apply(batch)
        except Exception as e:
            if is_unavailable(e):
                self._unavailable(e)
                return False
            log.warning("db writer: a batch was refused (%s); committing one by one", e)
            return await self._t_commit_each(batch, entries)
        self._committed(len(batch))
        return True

    async def _t_commit_each(
        self, batch: Sequence[r.Record], entries: list[dict[str, Any]]
    ) -> bool:
        for rec, entry in zip(batch, entries, strict=True):
            try:
                await self._t_apply([rec])
            except Exception as e:
                if is_unavailable(e):
                    self._unavailable(e)
                    return False  # the whole batch stays pending; what did commit is idempotent
                self._quarantine(entry, f"the database refused it: {e}", "database")
                continue
            self._committed(1)
        return True

    def _committed(self, n: int) -> None:
        self.committed += n
        self.batches += 1
        if not self.available:
            log.warning("db writer: database is back (%s)", db_engine.describe(self.url))
        self.available = True

    def _unavailable(self, e: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(e).__name__}: {e}"[:500]
        if self.available:
            self.outages += 1
            log.warning(
                "db writer: database unavailable (%s); journaling until it returns",
                self.last_error,
            )
        self.available = False
        self._next_try_s = time.monotonic() + self.retry_s

    async def _t_close(self) -> None:
        engine, self._db_engine = self._db_engine, None
        if isinstance(engine, AsyncEngine):
            await engine.dispose()
        elif engine is not None:
            engine.dispose()
        self.journal.close()

    # -- control --------------------------------------------------------------------------------

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record offered so far is committed; False on timeout."""
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self._settled.wait()
                    if not self.queue and self.journal.pending == 0:
                        return True
                    self._settled.clear()
        except TimeoutError:
            return False

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop taking records, journal what is queued, try one last commit, release all
        (the database thread included)."""
        self._stopping = True
        self._wake.set()
        if self._opened:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout_s or self.timeout_s * 3)
        await self.engine.dispose()
        if self.db.running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s * 3):
                    await self.db.call(self._t_close)
            await self.db.stop()
        else:
            await asyncio.to_thread(self.journal.close)

    def stats(self) -> dict[str, Any]:
        return {
            "database": db_engine.describe(self.url),
            "node_id": self.node_id,
            "available": self.available,
            "last_error": self.last_error,
            "queue": self.queue.stats.as_dict(),
            "handoff": self.db.stats(),
            "journal": self.journal.stats(),
            "committed": self.committed,
            "replayed": self.replayed,
            "batches": self.batches,
            "failures": self.failures,
            "outages": self.outages,
            "running": self.running,
            "restarts": self.restarts,
            "quarantined": dict(self.quarantined),
            "lost_nodes": list(self.lost_nodes),
        }
