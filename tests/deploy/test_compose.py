"""docker/compose.yaml brought up by podman-compose, with docker/compose.offline.yaml putting
local builds in place of the upstream images and every service on loopback addresses, inside
a network namespace of the test's own (NETWORK.md): NGINX, two tidegate nodes, PostgreSQL,
Redis and coturn. Through NGINX's TLS a session reaches a node, resumes on the same node,
and its records land in PostgreSQL."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import Stack, write_certificate
from tests.deploy.containers import BUILD_TIMEOUT_S, START_TIMEOUT_S, build_logged, podman_images
from tests.deploy.render import render_nginx
from tests.netns import network_namespace
from tests.support import scaled

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ["-f", str(ROOT / "docker" / "compose.yaml")]
COMPOSE += ["-f", str(ROOT / "docker" / "compose.offline.yaml")]
PUBLIC = "127.0.0.1"
NODES = {"a": "127.0.0.2", "b": "127.0.0.3"}
COTURN = "127.0.0.4"
POSTGRES = "127.0.0.5"
#: the longest fail_timeout of nginx.conf's upstream servers
NGINX_FAIL_TIMEOUT_S = max(
    int(t) for t in re.findall(r"fail_timeout=(\d+)s", (ROOT / "nginx" / "nginx.conf").read_text())
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S)]


@pytest.fixture(scope="module")
def service_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """NGINX, PostgreSQL, Redis and coturn images built from the Debian base (cached)."""
    images = podman_images()
    log = tmp_path_factory.mktemp("services") / "build.log"
    print(f"service image build seconds: {build_logged(images.build_services, log)}")
    return dict(images.SERVICE_TAGS)


@pytest.fixture(scope="module")
def compose(
    cpu_image: str, service_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """The compose stack up in a fresh namespace; the stack and the database URL. Brought
    down (volumes removed) and the namespace deleted afterwards."""
    folder = tmp_path_factory.mktemp("compose")
    write_certificate(folder, PUBLIC)
    nodes = {f"tidegate-{n}": addr for n, addr in NODES.items()}
    (folder / "nginx.conf").write_text(
        render_nginx(
            public_addr=PUBLIC, nodes=nodes, coturn_addr=COTURN, tls_dir=Path("/etc/nginx/tls")
        )
    )
    password = secrets.token_hex(12)
    env = {
        **podman_images().podman_env(),
        "PUBLIC_IP": PUBLIC,
        "PUBLIC_HOST": PUBLIC,
        "TIDEGATE_JWT_SECRET": secrets.token_hex(32),
        "TIDEGATE_TURN_SECRET": secrets.token_hex(16),
        "POSTGRES_PASSWORD": password,
        "TIDEGATE_NGINX_CONF": str(folder / "nginx.conf"),
        "TIDEGATE_TLS_DIR": str(folder),
    }
    project = ["-p", f"tg{os.getpid()}{secrets.token_hex(3)}"]
    podman_compose = [sys.executable, "-m", "podman_compose", *project, *COMPOSE]
    with network_namespace() as netns:
        # podman joins the containers to the namespace (run under `ip netns exec`, runc
        # would find no cgroup mount: that remounts /sys).
        env["TIDEGATE_NETWORK_MODE"] = f"ns:/run/netns/{netns}"
        log = folder / "compose.log"

        def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
            with log.open("a") as out:
                return subprocess.run(
                    [*podman_compose, *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    cwd=ROOT,
                )

        try:
            up = run("up", "-d", timeout=scaled(300))
            assert up.returncode == 0, log.read_text()[-4000:]
            stack = Stack(netns, folder, env["TIDEGATE_JWT_SECRET"], "")
            urls = [f"https://{PUBLIC}", *(f"http://{a}:8080" for a in NODES.values())]
            ready = stack.probe("ready", urls=urls, timeout_s=START_TIMEOUT_S)
            if any(v != 200 for v in ready["status"].values()):
                logs = run("logs", timeout=scaled(60))
                raise AssertionError(f"not ready: {ready} ({logs.returncode})\n{log.read_text()}")
            # NGINX takes a node that refused a connection while it started out of its
            # upstreams for fail_timeout after the refusal (nginx.conf): until then every new
            # session goes to the node that was up first (seen on a slower machine).
            time.sleep(NGINX_FAIL_TIMEOUT_S)
            yield stack, f"postgresql://tidegate:{password}@{POSTGRES}:5432/tidegate"
        finally:
            run("down", "-v", "-t", "10", timeout=scaled(300))


def test_a_session_through_nginx_stays_on_its_node_and_lands_in_postgres(
    compose: tuple[Stack, str],
) -> None:
    """Through NGINX's TLS (HTTP/2): new sessions reach both nodes; each resumes (and takes
    an HTTP offer) on the node that holds it, whose answer advertises NGINX's address; a
    resume sent straight to the other node does not find it; every session is a row in
    PostgreSQL, written by the node that holds it."""
    stack, db = compose
    other = {"a": f"{NODES['b']}:8080", "b": f"{NODES['a']}:8080"}
    out = stack.probe(
        "sticky", base=f"https://{PUBLIC}", token=stack.token(), sessions=4, other_node=other
    )
    assert out["alpn"] == "h2"
    assert out["readyz"][0] == 200
    sessions = out["sessions"]
    assert {s["id"][2:].split(".", 1)[0] for s in sessions} == set(NODES), sessions
    for s in sessions:
        assert s["resumed"] and s["offer_status"] == 200, s
        assert s["answer_candidates"] and all(a == PUBLIC for a, _ in s["answer_candidates"]), s
        assert s["elsewhere"] != "resumed", s
    ids = [s["id"] for s in sessions]
    rows = stack.probe("records", db=db, ids=ids, timeout_s=30)["sessions"]
    by_id = {r["id"]: r for r in rows}
    assert set(ids) <= set(by_id), rows
    writers: dict[str, set[str]] = {}  # route id -> the record writers' node ids
    for sid in ids:
        writers.setdefault(sid[2:].split(".", 1)[0], set()).add(by_id[sid]["node_id"])
    assert all(len(w) == 1 for w in writers.values()), writers
    assert writers["a"] != writers["b"], writers
