"""What the store reads of the settings (the server's ``Settings`` has it): the store never
imports the server."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tidegate.sessions.errors import ConfigError

__all__ = ["ConfigError", "StoreSettings"]


class StoreSettings(Protocol):
    """The settings of the database, the writer and the journal (``TIDEGATE_DB_*``)."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def database_url(self) -> str | None: ...

    @property
    def db_migrate_on_start(self) -> bool: ...

    @property
    def db_queue_max_records(self) -> int: ...

    @property
    def db_batch_max_records(self) -> int: ...

    @property
    def db_timeout_s(self) -> float: ...

    @property
    def db_retry_s(self) -> float: ...

    @property
    def db_journal_fsync(self) -> bool: ...

    @property
    def db_journal_compact_bytes(self) -> int: ...
