#!/usr/bin/env bash
# Fetch official CRDs through the Go module proxy, checked against the pin's go.sum, into
#   ${GITMESH_TESTENV_CACHE:-$HOME/.cache/gitmesh/testenv}/crds/<name>-<version>/
# and print that directory on stdout. Idempotent: with a warm cache it runs no Go command.
#   crds.sh [osm]      the SMI and OSM CRDs: cmd/osm-bootstrap/crds/ of Open Service Mesh (osm-crds/)
#   crds.sh gateway-api  Gateway API's standard channel: config/crd/standard/ (gateway-api-crds/)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="${1:-osm}"
case "$name" in
osm) pin="$here/osm-crds" module=github.com/openservicemesh/osm crds=cmd/osm-bootstrap/crds ;;
gateway-api) pin="$here/gateway-api-crds" module=sigs.k8s.io/gateway-api crds=config/crd/standard ;;
*)
    echo "testenv/crds.sh: unknown CRD set '$name' (osm or gateway-api)" >&2
    exit 2
    ;;
esac

die() {
    echo "testenv/crds.sh: $*" >&2
    exit 1
}

version="$(awk -v mod="$module" '$1 == "require" && $2 == mod { print $3; exit }' "$pin/go.mod")"
[[ -n "$version" ]] || die "cannot find the $module version in $pin/go.mod"

cache_root="${GITMESH_TESTENV_CACHE:-$HOME/.cache/gitmesh/testenv}"
out="$cache_root/crds/$name-$version"
mkdir -p "$(dirname "$out")"

# Serialise concurrent runs (parallel test workers, two checkouts) on one cache.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out.lock"
    flock 9
fi

stamp="$(cat "$pin/go.mod" "$pin/go.sum" | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
    echo "$out"
    exit 0
fi

command -v go >/dev/null 2>&1 ||
    die "the Go toolchain ('go') is not on PATH; it fetches the CRDs from the Go module proxy (see testenv/README.md)"

export GOWORK=off
export GOFLAGS=-mod=readonly
# Inside the pinning module, Go refuses a download whose hash differs from go.sum.
(cd "$pin" && go mod download "$module") || die "fetching $module@$version failed (see the Go errors above)"
dir="$(cd "$pin" && go mod download -json "$module" | awk -F'"' '$2 == "Dir" { print $4 }')"
[[ -d "$dir/$crds" ]] || die "$module@$version has no $crds"

tmp="$out.tmp.$$"
trap "rm -rf '$tmp'" EXIT
rm -rf "$tmp" && mkdir -p "$tmp"
cp "$dir/$crds"/*.yaml "$tmp/"
chmod -R u+w "$tmp"
echo "$stamp" >"$tmp/.stamp"
rm -rf "$out" && mv "$tmp" "$out"
trap - EXIT
echo "$out"
