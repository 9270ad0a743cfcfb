#!/usr/bin/env bash
# Installs the SDK programs of tests/interop: downloads the pinned sdk-go module and builds the Go
# program into ~/.cache/eventing/interop (EVENTING_CACHE moves it), and installs the npm
# cloudevents package from package-lock.json into tests/interop/node/node_modules. Prints what it
# did; exits non-zero if a step fails. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"
cache="${EVENTING_CACHE:-$HOME/.cache/eventing}/interop"
mkdir -p "$cache"
(cd go && go build -o "$cache/interop-go" .)
(cd node && npm ci --no-audit --no-fund --silent)
echo "$cache/interop-go and tests/interop/node/node_modules"
