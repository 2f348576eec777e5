"""Build tidegate's images offline with podman, from a local Debian base (docs/deploy.md).

No container registry is reachable on the machines this project is tested on, so the upstream
base images of docker/ (python, node, nginx, postgres, redis, coturn) are replaced by local
ones: a Debian bookworm root made with ``debootstrap --variant=minbase`` and ``podman
import``ed once (``BASE_TAG``), and small images built on it (docker/offline/). The shipped
Dockerfiles take their bases as build arguments, so the same files build here.

Everything is cached by podman itself: the base image is made only when it is missing, and
``podman build --layers`` reuses every unchanged layer (pip's and npm's downloads and the
prepared models sit in build cache mounts), so a second build is quick.

RUN steps use the host's network (``--network host``: podman's default bridge is a private
range, which these machines must not use) and the host's CA bundle, mounted read-only for the
build and named in PIP_CERT / NODE_EXTRA_CA_CERTS, never written into a layer.

Usage: python scripts/podman_images.py [cpu|services|all]   (the tests import it)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
OFFLINE = ROOT / "docker" / "offline"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Where RUN steps see it: not under /etc/ssl, where the image's own ca-certificates writes.
CA_MOUNT = "/run/host-ca/ca-certificates.crt"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

# Bump the suffix to make a new base (the old one stays until `podman rmi`).
BASE_TAG = "localhost/tidegate-debian:bookworm-minbase-1"
PYTHON_TAG = "localhost/tidegate-python:3.11-bookworm"
NODE_TAG = "localhost/tidegate-node:20-bookworm"
CPU_TAG = "localhost/tidegate:cpu"
STAGE_TAGS = (("web", "localhost/tidegate-stage:web"), ("build", "localhost/tidegate-stage:build"))
# compose's upstream images -> the local ones docker/compose.offline.yaml names
SERVICE_TAGS = {
    "nginx": "localhost/tidegate-nginx:bookworm",
    "postgres": "localhost/tidegate-postgres:bookworm",
    "redis": "localhost/tidegate-redis:bookworm",
    "coturn": "localhost/tidegate-coturn:bookworm",
}
# --format docker keeps HEALTHCHECK (OCI images have none); --network host: see above.
BUILD_FLAGS = ("--format", "docker", "--layers", "--network", "host")
NICE = ("nice", "-n", "10")  # the machine is shared: builds yield to interactive work


def podman_env() -> dict[str, str]:
    """The environment podman runs with: the project's containers.conf (runc, ulimits)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, log: TextIO | None = None, timeout: float | None = None) -> str:
    """Run podman; its stdout. CalledProcessError (with the output) when it fails."""
    out = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        stdout=subprocess.PIPE,
        stderr=log if log is not None else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, out.args, out.stdout, out.stderr)
    return out.stdout


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(
            ["podman", "image", "exists", tag], env=podman_env(), capture_output=True
        ).returncode
        == 0
    )


def ensure_base(log: TextIO) -> float:
    """The local Debian base image, made once (``debootstrap`` then ``podman import``); the
    seconds it took (0 when it existed)."""
    if image_exists(BASE_TAG):
        return 0.0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tidegate-debootstrap-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [*NICE, "debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
        # apt's lists are not kept: every image runs apt-get update itself.
        shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        (rootfs / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", "CMD=/bin/bash", "-", BASE_TAG],
            stdin=tar.stdout,
            env=podman_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap root failed")
    return time.monotonic() - start


def build(
    containerfile: Path,
    tag: str,
    log: TextIO,
    build_args: dict[str, str] | None = None,
    *,
    target: str | None = None,
) -> float:
    """``podman build`` one image (or one ``target`` stage) from the repository root, layers
    cached; its seconds."""
    args = ["--build-arg", f"BASE_IMAGE={BASE_TAG}"]
    if target is not None:
        args += ["--target", target]
    for name, value in (build_args or {}).items():
        args += ["--build-arg", f"{name}={value}"]
    if CA_BUNDLE.is_file():
        args += ["-v", f"{CA_BUNDLE}:{CA_MOUNT}:ro"]
        args += ["--build-arg", f"PIP_CERT={CA_MOUNT}"]
        args += ["--build-arg", f"NODE_EXTRA_CA_CERTS={CA_MOUNT}"]
    start = time.monotonic()
    log.write(f"== podman build {containerfile.relative_to(ROOT)} -> {tag}\n")
    log.flush()
    subprocess.run(
        [
            *NICE,
            "podman",
            "build",
            *BUILD_FLAGS,
            "-f",
            str(containerfile),
            "-t",
            tag,
            *args,
            str(ROOT),
        ],
        env=podman_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        check=True,
        cwd=ROOT,
    )
    return time.monotonic() - start


def build_cpu(log: TextIO) -> dict[str, float]:
    """The CPU image (docker/Dockerfile) on local python and node bases; seconds per step."""
    times = {"base": ensure_base(log)}
    times["python"] = build(OFFLINE / "python.Containerfile", PYTHON_TAG, log)
    times["node"] = build(OFFLINE / "node.Containerfile", NODE_TAG, log)
    args = {"PYTHON_IMAGE": PYTHON_TAG, "NODE_IMAGE": NODE_TAG}
    dockerfile = ROOT / "docker" / "Dockerfile"
    # The first stages tagged too, so that pruning keeps their layers (the cache of the next
    # build) and drops only what no tag reaches (the layers of earlier builds).
    times["cpu"] = sum(build(dockerfile, tag, log, args, target=t) for t, tag in STAGE_TAGS)
    times["cpu"] += build(dockerfile, CPU_TAG, log, args)
    prune(log)
    return times


def prune(log: TextIO) -> None:
    """Remove the images no tag reaches (earlier builds' layers): each code change leaves a
    runtime image and a prepared-models layer behind otherwise. Housekeeping only: an image
    that another build still holds (an interrupted build's working container) is kept, and
    the build goes on."""
    done = subprocess.run(
        ["podman", "image", "prune", "-f"],
        env=podman_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if done.returncode != 0:
        print(f"podman image prune exited {done.returncode}: images kept", file=log, flush=True)


def build_services(log: TextIO) -> dict[str, float]:
    """compose's other services (NGINX, PostgreSQL, Redis, coturn) from Debian packages."""
    times = {"base": ensure_base(log)}
    for name, tag in SERVICE_TAGS.items():
        times[name] = build(OFFLINE / f"{name}.Containerfile", tag, log)
    prune(log)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("cpu", "services", "all"), nargs="?", default="cpu")
    args = parser.parse_args()
    times: dict[str, float] = {}
    if args.what in ("cpu", "all"):
        times.update(build_cpu(sys.stderr))
    if args.what in ("services", "all"):
        times.update(build_services(sys.stderr))
    for step, seconds in times.items():
        print(f"{step}: {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
