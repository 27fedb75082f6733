#!/usr/bin/env bash
# Build the test control plane (kube-apiserver + etcd) from Go modules into
#   ${GITMESH_TESTENV_CACHE:-$HOME/.cache/gitmesh/testenv}/<k8s-version>/
# and print that directory on stdout. Idempotent: a binary is rebuilt only when
# it is missing or when its wrapper module (go.mod, go.sum, main.go) changed.
# Progress and errors go to stderr; a failed build exits non-zero with Go's
# own error output.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "testenv/build.sh: $*" >&2
    exit 1
}

command -v go >/dev/null 2>&1 ||
    die "the Go toolchain ('go') is not on PATH; it is needed to build kube-apiserver and etcd (see testenv/README.md)"

# The versions live in the wrapper modules' go.mod files; read them from there
# so that there is exactly one place to change.
required_version() { # <go.mod> <module path>
    awk -v mod="$2" '$1 == mod && $2 ~ /^v[0-9]/ { print $2; exit }
                     $1 == "require" && $2 == mod { print $3; exit }' "$1"
}
k8s_version="$(required_version "$here/kube-apiserver/go.mod" k8s.io/kubernetes)"
etcd_version="$(required_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
[[ -n "$k8s_version" ]] || die "cannot find the k8s.io/kubernetes version in kube-apiserver/go.mod"
[[ -n "$etcd_version" ]] || die "cannot find the go.etcd.io/etcd/server/v3 version in etcd/go.mod"

cache_root="${GITMESH_TESTENV_CACHE:-$HOME/.cache/gitmesh/testenv}"
out="$cache_root/$k8s_version"
mkdir -p "$out"

# Serialise concurrent runs (parallel test workers, two checkouts) on one cache.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out/.lock"
    flock 9
fi

# Go settings that must not leak in from the caller: a go.work elsewhere, cgo
# (static binaries need no C toolchain), -mod=vendor or similar in GOFLAGS.
# GOPROXY, GOMODCACHE and GOCACHE keep the caller's values (or Go's defaults),
# so the ~600 MB of downloaded modules are shared and can be cached by CI.
export GOWORK=off
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

stamp_of() { # <module dir> <ldflags>: a digest of what decides the binary
    (
        cd "$1"
        cat go.mod go.sum main.go
        echo "$2"
    ) | sha256sum | cut -d' ' -f1
}

build() { # <name> <ldflags>
    local name="$1" ldflags="$2"
    local src="$here/$name" bin="$out/$name"
    local stamp
    stamp="$(stamp_of "$src" "$ldflags")"
    if [[ -x "$bin" && -f "$bin.stamp" && "$(cat "$bin.stamp")" == "$stamp" ]]; then
        return 0
    fi
    echo "testenv/build.sh: building $name into $out (the first build downloads modules and compiles; see testenv/README.md)" >&2
    local started=$SECONDS
    local tmp="$bin.tmp.$$"
    trap "rm -f '$tmp'" EXIT
    if ! (cd "$src" && go build -ldflags="$ldflags" -o "$tmp" .); then
        rm -f "$tmp"
        die "building $name failed (module $src, see the Go errors above)"
    fi
    mv -f "$tmp" "$bin"
    trap - EXIT
    echo "$stamp" >"$bin.stamp"
    echo "testenv/build.sh: built $name in $((SECONDS - started))s" >&2
}

minor="${k8s_version#v1.}"
minor="${minor%%.*}"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    version_ldflags+=" -X $pkg.gitTreeState=clean"
done

build etcd "-s -w"
build kube-apiserver "-s -w$version_ldflags"

cat >"$out/VERSIONS" <<EOF
kube-apiserver $k8s_version
etcd $etcd_version
$(go env GOVERSION)
EOF

echo "$out"
