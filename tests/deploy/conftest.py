"""The deployment stack of docker/compose.yaml, started for real inside a network namespace.

One namespace (NETWORK.md) plays the whole deployment, each part on an address of its own:

| address | what | compose service |
| --- | --- | --- |
| 10.250.0.1 | NGINX: HTTPS 443, TURN 3478 (UDP, TCP), 5349 (TLS), media 40000-40199/udp | nginx |
| 10.250.0.2 | tidegate node ``a``: HTTP 8080, media 40000-40099/udp | tidegate-a |
| 10.250.0.3 | tidegate node ``b``: HTTP 8080, media 40100-40199/udp | tidegate-b |
| 10.250.0.4 | coturn: 3478, relay ports 49160-49200/udp | coturn |

NGINX and coturn run the shipped nginx/ files, rendered (tests/deploy/render.py). The nodes are
``tidegate serve`` with no engines (loopback sessions need none). Clients run inside the
namespace too (tests/deploy/probe.py, headless Chromium).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.containers import build_logged, podman_images
from tests.deploy.render import render_nginx, render_turnserver
from tests.netns import in_netns, network_namespace, stop
from tests.store.conftest import postgres_server  # noqa: F401 (the image tests' database)
from tests.support import scaled
from tidegate.server.auth import mint_token

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "10.250.0.1"
NODES = {"a": "10.250.0.2", "b": "10.250.0.3"}
COTURN = "10.250.0.4"
MEDIA_PORTS = {"a": "40000-40099", "b": "40100-40199"}
HTTP_PORT = 8080
START_TIMEOUT_S = 60.0


def write_certificate(folder: Path, ip: str) -> Path:
    """A self-signed certificate for ``ip`` (tidegate.crt, tidegate.key); returns the cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidegate test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt = folder / "tidegate.crt"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tidegate.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt


def _wait_for(what: str, check: Any, procs: list[subprocess.Popen[Any]], logs: list[Path]) -> None:
    deadline = time.monotonic() + scaled(START_TIMEOUT_S)
    while not check():
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
            raise AssertionError(f"{what} did not start (exited: {dead})\n{tail}")
        time.sleep(0.1)


@dataclass
class Stack:
    netns: str
    folder: Path
    jwt_secret: str
    nginx_test: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://{PUBLIC}"

    @property
    def cert(self) -> Path:
        return self.folder / "tidegate.crt"

    def token(self, subject: str = "alice") -> str:
        return mint_token(self.jwt_secret.encode(), subject=subject, tenant="acme")

    def probe(self, scenario: str, **args: Any) -> Any:
        """Run tests/deploy/probe.py inside the namespace; its JSON answer."""
        env = {**os.environ, "SSL_CERT_FILE": str(self.cert)}
        out = subprocess.run(
            in_netns(
                self.netns,
                [sys.executable, "-m", "tests.deploy.probe", scenario, json.dumps(args)],
            ),
            capture_output=True,
            text=True,
            timeout=scaled(90),
            cwd=ROOT,
            env=env,
        )
        if out.returncode != 0:
            raise AssertionError(f"probe {scenario} failed:\n{out.stdout}\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def log(self, name: str) -> str:
        return (self.folder / name).read_text()


def _start(stack: Stack, argv: list[str], log: str, env: dict[str, str] | None = None) -> None:
    with (stack.folder / log).open("w") as fh:
        proc = subprocess.Popen(
            in_netns(stack.netns, argv),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=stack.folder,
        )
    stack.procs.append(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """NGINX, coturn and two tidegate nodes in a fresh namespace; everything stopped and the
    namespace deleted afterwards."""
    folder = tmp_path_factory.mktemp("deploy")
    write_certificate(folder, PUBLIC)
    turn_secret = secrets.token_hex(16)
    (folder / "nginx.conf").write_text(
        render_nginx(
            public_addr=PUBLIC,
            nodes={f"tidegate-{n}": addr for n, addr in NODES.items()},
            coturn_addr=COTURN,
            tls_dir=folder,
        )
    )
    (folder / "turnserver.conf").write_text(
        render_turnserver(
            listen_addr=COTURN, allowed_peer=PUBLIC, pid_file=folder / "turnserver.pid"
        )
    )
    nginx = ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"]
    with network_namespace([PUBLIC, *NODES.values(), COTURN]) as netns:
        stack = Stack(netns, folder, secrets.token_hex(32), "")
        try:
            checked = subprocess.run(
                in_netns(netns, [*nginx, "-t", "-g", f"pid {folder}/nginx-t.pid;"]),
                capture_output=True,
                text=True,
                timeout=scaled(30),
            )
            assert checked.returncode == 0, checked.stderr
            stack.nginx_test = checked.stderr
            for node, addr in NODES.items():
                data = folder / f"node-{node}"
                data.mkdir()
                env = {
                    **os.environ,
                    "PYTHONPATH": str(ROOT),  # the tidegate these tests come with
                    "TIDEGATE_HOST": addr,
                    "TIDEGATE_PORT": str(HTTP_PORT),
                    "TIDEGATE_ROUTE_ID": node,
                    "TIDEGATE_JWT_SECRET": stack.jwt_secret,
                    "TIDEGATE_DATA_DIR": str(data),
                    "TIDEGATE_ENGINES": "",
                    "TIDEGATE_LOG_LEVEL": "warning",
                    "TIDEGATE_METRICS_INTERVAL_S": "0.5",
                    "TIDEGATE_ICE_HOSTS": f"{PUBLIC}={addr}",
                    "TIDEGATE_ICE_PORTS": MEDIA_PORTS[node],
                    "TIDEGATE_TURN_URLS": ",".join(
                        [
                            f"turn:{PUBLIC}:3478?transport=udp",
                            f"turn:{PUBLIC}:3478?transport=tcp",
                            f"turns:{PUBLIC}:5349?transport=tcp",
                        ]
                    ),
                    "TIDEGATE_TURN_SECRET": turn_secret,
                }
                _start(stack, [sys.executable, "-m", "tidegate", "serve"], f"node-{node}.log", env)
            _start(
                stack,
                [
                    "turnserver",
                    "-c",
                    str(folder / "turnserver.conf"),
                    f"--static-auth-secret={turn_secret}",
                    f"--userdb={folder / 'turndb'}",
                ],
                "coturn.log",
            )
            _start(stack, [*nginx, "-g", f"pid {folder}/nginx.pid; daemon off;"], "nginx.log")
            logs = [folder / n for n in ("node-a.log", "node-b.log", "coturn.log", "nginx.log")]
            for node in NODES:
                _wait_for(
                    f"node {node}",
                    lambda n=node: "listening on" in stack.log(f"node-{n}.log"),
                    stack.procs,
                    logs,
                )
            _wait_for("nginx", (folder / "nginx.pid").exists, stack.procs, logs)
            _wait_for(
                "coturn",
                lambda: "Total General servers" in stack.log("coturn.log"),
                stack.procs,
                logs,
            )
            yield stack
        finally:
            for proc in reversed(stack.procs):
                stop(proc)


@pytest.fixture(scope="session")
def cpu_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """localhost/tidegate:cpu, built (or found in podman's cache) from docker/Dockerfile by
    scripts/podman_images.py; the build's seconds per step are printed (pytest -s)."""
    images = podman_images()
    log = tmp_path_factory.mktemp("image") / "build.log"
    times = build_logged(images.build_cpu, log)
    print(f"image build seconds: {times}")
    return str(images.CPU_TAG)
