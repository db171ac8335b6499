#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian test peers, the virtualenv with Shoal and its deps,
# and (with --kafka) the Apache Kafka broker jars from Maven Central. Safe to run again: it skips
# what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_kafka=0
want_peers=0
for arg in "$@"; do
  case "$arg" in
    --kafka) want_kafka=1 ;;
    --peers) want_peers=1 ;;
    *) echo "usage: $0 [--kafka] [--peers]" >&2; exit 2 ;;
  esac
done

# Debian packages used as independent peers in tests (exporters and oracle decoders).
if [ "$want_peers" = 1 ]; then
  # prometheus: promtool and a real server for the dashboard and alert-rule tests; openssl: the
  # test CA of the SASL_SSL broker.
  peers=(nfdump softflowd tshark tcpreplay iproute2 pmacct prometheus openssl)
  missing=()
  for p in "${peers[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# Python virtualenv; reinstalled only when pyproject.toml changes.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.shoal-installed
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
  echo "bootstrap: installing Python dependencies into .venv"
  .venv/bin/pip install -q -e '.[test]'
  cp pyproject.toml "$stamp"
fi

# Deployment tools (helm from the Go module proxy, @grafana/schema + tsc from npm), cached per user.
if [ "$want_peers" = 1 ]; then
  scripts/tools.sh
fi

if [ "$want_kafka" = 1 ]; then
  scripts/kafka.sh fetch
fi
