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
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "setup-system: missing ${need[*]}; install them as root (apt-get install -y ${need[*]})" >&2
  exit 0
fi
echo "setup-system: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
