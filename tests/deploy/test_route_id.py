"""``route_id``: the node's name in the session ids it creates, which NGINX routes on."""

from __future__ import annotations

import re
import time

import pytest

from tidegate.server.auth import Principal
from tidegate.server.errors import ConfigError
from tidegate.server.settings import Settings
from tidegate.sessions.session import SessionRegistry

ALICE = Principal("alice", "acme", frozenset({"session"}), time.time() + 600)


def test_session_ids_name_the_node_that_holds_them() -> None:
    """With ``route_id`` the id is ``s_<route_id>.<random>`` (what nginx.conf's map reads);
    without it, a plain ``s_<random>``."""
    routed = SessionRegistry(Settings.load({"TIDEGATE_ROUTE_ID": "a7"})).create(ALICE, {})
    assert re.fullmatch(r"s_a7\.[A-Za-z0-9_-]{16}", routed.id), routed.id
    plain = SessionRegistry(Settings.load({})).create(ALICE, {})
    assert re.fullmatch(r"s_[A-Za-z0-9_-]{16}", plain.id), plain.id


@pytest.mark.parametrize("bad", ["A", "node.1", "x" * 17, "a-b"])
def test_a_route_id_nginx_could_not_match_is_refused(bad: str) -> None:
    """Only 1-16 of a-z and 0-9: anything else is a configuration error naming the setting."""
    with pytest.raises(ConfigError, match="route_id must be 1-16 of a-z and 0-9"):
        Settings.load({"TIDEGATE_ROUTE_ID": bad})
