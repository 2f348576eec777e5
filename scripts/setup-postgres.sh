#!/usr/bin/env bash
# PostgreSQL server binaries for the persistence tests (idempotent; `make setup` runs it).
# The tests use the PostgreSQL on 127.0.0.1:5432 when one answers; where none does they start a
# throwaway cluster of their own with Debian's initdb and pg_ctl (tests/store/postgres.py),
# which this installs when missing. Needs root (CI is root) or sudo; otherwise says what to do.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && id postgres >/dev/null 2>&1; then
  exit 0
fi
. "$(dirname "$0")/as-root.sh"
as_root "setup-postgres: no PostgreSQL server binaries; install them as root (apt-get install -y postgresql)"
echo "setup-postgres: installing Debian's postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# Installing the package must not start a server of its own: policy-rc.d says no (one we put
# there ourselves, and take away after).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
fi
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
