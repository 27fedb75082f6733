#!/usr/bin/env bash
# Build the go-control-plane peer server (bench/peer) into
#   ${GITMESH_PEER_CACHE:-$HOME/.cache/gitmesh/peer}/bin/peer-<hash of go.mod, go.sum and the .go files>
# and print its path on stdout. Idempotent: built again only when the module changed. The Go build
# and module caches live under the same directory. Progress and errors go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v go >/dev/null 2>&1 || {
    echo "bench/peer/build.sh: the Go toolchain ('go') is not on PATH" >&2
    exit 1
}
cache="${GITMESH_PEER_CACHE:-$HOME/.cache/gitmesh/peer}"
hash="$(cd "$here" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
out="$cache/bin/peer-$hash"
if [[ ! -x "$out" ]]; then
    mkdir -p "$cache/bin"
    echo "bench/peer/build.sh: building $out" >&2
    (cd "$here" && GOCACHE="$cache/build" GOMODCACHE="$cache/mod" GOFLAGS=-mod=readonly go build -o "$out.tmp" .)
    mv "$out.tmp" "$out"
fi
echo "$out"
