"""What the cluster reads of the settings (the server's ``Settings`` has it): the cluster
never imports the server."""

from __future__ import annotations

from typing import Protocol


class CacheSettings(Protocol):
    """The result caches' settings (``TIDEGATE_RESULT_CACHES``, ``TIDEGATE_CACHE_*``)."""

    @property
    def result_caches(self) -> bool: ...

    @property
    def cache_tts_max_bytes(self) -> int: ...

    @property
    def cache_llm_max_bytes(self) -> int: ...

    @property
    def cache_item_max_bytes(self) -> int: ...

    @property
    def cache_ttl_s(self) -> float: ...


class ClusterSettings(CacheSettings, Protocol):
    """The node's, Redis's and the cluster's settings."""

    @property
    def max_sessions(self) -> int: ...

    @property
    def max_sessions_per_tenant(self) -> int: ...

    @property
    def route_id(self) -> str: ...

    @property
    def redis_url(self) -> str | None: ...

    @property
    def redis_key_prefix(self) -> str: ...

    @property
    def redis_timeout_s(self) -> float: ...

    @property
    def redis_retry_s(self) -> float: ...

    @property
    def node_id(self) -> str | None: ...

    @property
    def node_url(self) -> str | None: ...

    @property
    def cluster_heartbeat_s(self) -> float: ...

    @property
    def cluster_node_ttl_s(self) -> float: ...

    @property
    def cluster_max_sessions(self) -> int | None: ...

    @property
    def cluster_sensor_backlog_readings(self) -> int: ...
