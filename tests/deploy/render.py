"""Render the shipped nginx/ files for a test: only addresses, file paths and NGINX's worker
count change.

Every replacement must match the shipped text, so a config that drifts from what the tests
expect fails here instead of being tested half-rendered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "nginx" / "nginx.conf"
TURNSERVER_CONF = ROOT / "nginx" / "turnserver.conf"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
SHIPPED_TLS_DIR = "/etc/nginx/tls/"


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise AssertionError(f"the shipped config no longer contains {old!r}")
    return text.replace(old, new)


def render_nginx(
    *, public_addr: str, nodes: Mapping[str, str], coturn_addr: str, tls_dir: Path
) -> str:
    """nginx.conf listening on ``public_addr`` only, with the compose service names (``nodes``:
    ``tidegate-a`` -> address, ``coturn``) replaced by addresses and the certificate in
    ``tls_dir``; the stream module loaded where Debian builds it as a module."""
    text = NGINX_CONF.read_text()
    text, n = re.subn(r"(?m)^(\s*listen )(\d+(?:-\d+)?)([ ;])", rf"\g<1>{public_addr}:\2\3", text)
    assert n >= 6, f"expected the shipped listen lines, found {n}"
    for name, addr in nodes.items():
        text = _replace(text, f"{name}:", f"{addr}:")
    text = _replace(text, "coturn:3478", f"{coturn_addr}:3478")
    text = _replace(text, SHIPPED_TLS_DIR, f"{tls_dir}/")
    # Two workers whatever the machine: with reuseport each worker holds a socket per media
    # port, and the test process's open-file limit is not a server's.
    text = _replace(text, "worker_processes auto;", "worker_processes 2;")
    if STREAM_MODULE.exists():
        text = f"load_module {STREAM_MODULE};\n" + text
    return text


def render_turnserver(*, listen_addr: str, allowed_peer: str, pid_file: Path) -> str:
    """turnserver.conf listening and relaying on ``listen_addr``, allowing the one private
    address the test's media really lives on (``allowed_peer``)."""
    text = TURNSERVER_CONF.read_text()
    _replace(text, "denied-peer-ip=10.0.0.0-10.255.255.255", "")
    extra = [
        f"listening-ip={listen_addr}",
        f"relay-ip={listen_addr}",
        f"allowed-peer-ip={allowed_peer}",
        f"pidfile={pid_file}",
        "verbose",  # one line per TURN request: the test reads which session allocated
    ]
    return text + "\n# -- rendered for the test --\n" + "\n".join(extra) + "\n"
