#!/usr/bin/env bash
# Builds the two binaries the Kubernetes tests run, kube-apiserver and etcd, from the Go module
# proxy (there are no release downloads here), into a cache folder outside the repository that is
# keyed by version. Does nothing when both are already there. Prints the folder.
#
# k8s.io/kubernetes pins its staging modules to v0.0.0 and resolves them with directory replaces
# that consumers never see, so hack/kubebins is a separate tools module that replaces each of them
# with its published v0.x tag (see ../shared/reference/k8s-testenv.md).
set -euo pipefail
cd "$(dirname "$0")/../hack/kubebins"

version=1.37.2
bin="${EVENTING_KUBEBINS:-$HOME/.cache/eventing/kubebins-$version}"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
    echo "$bin"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build-kubebins: Go is not installed; the Kubernetes tests need it to build kube-apiserver and etcd" >&2
    exit 1
fi
mkdir -p "$bin"
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -pgo=off \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
    -o "$bin/kube-apiserver.part" k8s.io/kubernetes/cmd/kube-apiserver
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/etcd.part" go.etcd.io/etcd/server/v3
mv "$bin/kube-apiserver.part" "$bin/kube-apiserver"
mv "$bin/etcd.part" "$bin/etcd"
echo "build-kubebins: built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
