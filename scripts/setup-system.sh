#!/usr/bin/env bash
# System packages the test suite needs, installed when missing (idempotent; `make setup` runs
# it): Debian's chromium (the browser test drives it over its DevTools pipe) and iproute2 (the
# browser test runs in a network namespace it creates). Needs root (CI is root) or sudo.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# espeak-ng: the TTS engine's phonemizer (libespeak-ng) and the ASR tests' synthetic speech.
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
# sox: resamples that speech (and the Piper voice's) to 16 kHz for the turn and echo tests
# (tidegate/bench/audio_sets.py).
command -v sox >/dev/null 2>&1 || need+=(sox)
# node and npm: the browser client (client-web/) is built and unit-tested with them.
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# nginx (with its stream module) and coturn: the deployment tests (tests/deploy/) start them
# inside a network namespace with configurations of their own; no system service is left running.
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
[ -x /usr/bin/turnserver ] || need+=(coturn)
# redis-server: the cluster tests (tests/cluster/) use the Redis on 127.0.0.1:6379 when
# one answers, else start their own on a free loopback port (never a system service).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# podman (with buildah and runc) and debootstrap: the image tests build docker/Dockerfile from
# a local Debian base and run it (scripts/podman_images.py, tests/deploy/test_image.py).
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
[ -x /usr/sbin/runc ] || command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
# catatonit: `podman kube play` builds its pod's pause image around it (the Kubernetes manifest
# test); a podman installed without its recommended packages lacks it.
command -v catatonit >/dev/null 2>&1 || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
# promtool (Debian's prometheus package): the alert rules are checked and unit-tested with it.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# kubectl (Debian's kubernetes-client, or any newer one): renders deploy/kubernetes/ (kustomize).
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
[ ${#need[@]} -eq 0 ] && exit 0
. "$(dirname "$0")/as-root.sh"
as_root "setup-system: missing ${need[*]}; install them as root (apt-get install -y ${need[*]})"
echo "setup-system: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# Installing nginx, coturn or prometheus must not start a server that holds ports 80 or 3478 on the host:
# policy-rc.d says no (one we put there ourselves, and take away after).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
fi
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Where a service manager started them anyway, stop them and keep them from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for unit in nginx coturn prometheus; do
    "${sudo[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi
