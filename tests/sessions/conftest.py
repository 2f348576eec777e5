"""The live-server fixtures of tests/server, for the session runtime's tests."""

from tests.server.conftest import server, server_settings

__all__ = ["server", "server_settings"]
