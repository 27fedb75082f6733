#!/usr/bin/env bash
# Build the test control plane (kube-apiserver + etcd) from Go modules into
#   ${GITMESH_TESTENV_CACHE:-$HOME/.cache/gitmesh/testenv}/<k8s-version>/
# and print that directory on stdout. `build.sh node` also builds what the test
# node runs: kubelet, kube-scheduler, kube-controller-manager, kube-proxy,
# CoreDNS and the pause and app programs of its images. `build.sh vault` builds
# HashiCorp Vault only (for the Vault PKI certificate provider's tests), into the
# same directory; `build.sh cert-manager` cert-manager's controller (CA issuer and
# approver), webhook and cainjector as one binary (cert-manager/main.go) and copies
# its CRDs beside it (cert-manager-crds/).
# `build.sh conformance` builds the Gateway API conformance suite as a test binary
# and the programs of the echo image its mesh tests deploy (Istio's echo server
# and client), into the same directory.
# Idempotent: a module's binaries are rebuilt only when one is missing or when
# the module (go.mod, go.sum, its .go files) or the link flags changed.
# Progress and errors go to stderr; a failed build exits non-zero with Go's
# own error output.
set -euo pipefail

with_vault=false with_conformance=false
with_cert_manager=false
case "${1:-}" in
"") with_node=false ;;
node) with_node=true ;;
vault) with_node=false with_vault=true ;;
cert-manager) with_node=false with_cert_manager=true ;;
conformance) with_node=false with_conformance=true ;;
*)
    echo "usage: testenv/build.sh [node|vault|cert-manager|conformance]" >&2
    exit 2
    ;;
esac

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
node_k8s_version="$(required_version "$here/node/go.mod" k8s.io/kubernetes)"
[[ "$node_k8s_version" == "$k8s_version" ]] ||
    die "node/go.mod requires k8s.io/kubernetes $node_k8s_version but kube-apiserver/go.mod $k8s_version; they must match"
coredns_version="$(required_version "$here/coredns/go.mod" github.com/coredns/coredns)"
[[ -n "$coredns_version" ]] || die "cannot find the github.com/coredns/coredns version in coredns/go.mod"
vault_version="$(required_version "$here/vault/go.mod" github.com/hashicorp/vault)"
[[ -n "$vault_version" ]] || die "cannot find the github.com/hashicorp/vault version in vault/go.mod"
cert_manager_version="$(required_version "$here/cert-manager/go.mod" github.com/cert-manager/cert-manager)"
[[ -n "$cert_manager_version" ]] ||
    die "cannot find the github.com/cert-manager/cert-manager version in cert-manager/go.mod"
conformance_version="$(required_version "$here/conformance/go.mod" sigs.k8s.io/gateway-api/conformance)"
[[ -n "$conformance_version" ]] || die "cannot find the conformance suite's version in conformance/go.mod"
istio_version="$(required_version "$here/echo/go.mod" istio.io/istio)"
[[ -n "$istio_version" ]] || die "cannot find the istio.io/istio version in echo/go.mod"

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

stamp_of() { # <module dir> <ldflags>: a digest of what decides the binaries
    (
        cd "$1"
        # shellcheck disable=SC2046 # the names are ours, without blanks
        cat go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort)
        echo "$2"
    ) | sha256sum | cut -d' ' -f1
}

# How a module's binaries are compiled into a folder: one `go build` of every main package, so
# packages shared by them compile once; `compile_<module>` where that is not it.
compile() { # <module> <ldflags> <folder>
    if declare -F "compile_$1" >/dev/null; then
        "compile_$1" "$2" "$3"
    else
        go build -ldflags="$2" -o "$3/" ./...
    fi
}

# The suite is the test binary of its module's test; `-test.run` etc. are its flags.
compile_conformance() { # <ldflags> <folder>
    go test -c -ldflags="$1" -o "$2/gateway-conformance.test" .
}

# Istio's echo server and client (the suite's echo-advanced image), and the certificate its
# image carries at /cert.crt and /cert.key for the server's TLS port.
compile_echo() { # <ldflags> <folder>
    go build -ldflags="$1" -o "$2/echo-server" istio.io/istio/pkg/test/echo/cmd/server &&
        go build -ldflags="$1" -o "$2/echo-client" istio.io/istio/pkg/test/echo/cmd/client || return 1
    local certs
    certs="$(go list -m -f '{{.Dir}}' istio.io/istio)/tests/testdata/certs/dns"
    install -m 0644 "$certs/cert-chain.pem" "$2/echo-cert.crt"
    install -m 0644 "$certs/key.pem" "$2/echo-cert.key"
}

build() { # <module> <ldflags> <binary>...
    local module="$1" ldflags="$2"
    shift 2
    local src="$here/$module" stamp_file="$out/$module.stamp"
    local stamp binary
    stamp="$(stamp_of "$src" "$ldflags")"
    local fresh=true
    for binary in "$@"; do
        [[ -f "$out/$binary" ]] || fresh=false
    done
    if $fresh && [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
        return 0
    fi
    echo "testenv/build.sh: building $* into $out (the first build downloads modules and compiles; see testenv/README.md)" >&2
    local started=$SECONDS
    local tmp="$out/.build-$module.$$"
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp"
    if ! (cd "$src" && compile "$module" "$ldflags" "$tmp"); then
        rm -rf "$tmp"
        die "building $module failed (module $src, see the Go errors above)"
    fi
    for binary in "$@"; do
        mv -f "$tmp/$binary" "$out/$binary"
    done
    rm -rf "$tmp"
    trap - EXIT
    echo "$stamp" >"$stamp_file"
    echo "testenv/build.sh: built $* in $((SECONDS - started))s" >&2
}

minor="${k8s_version#v1.}"
minor="${minor%%.*}"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    version_ldflags+=" -X $pkg.gitTreeState=clean"
done

if $with_vault; then
    build vault "-s -w" vault
    echo "$out"
    exit 0
fi
if $with_cert_manager; then
    build cert-manager "-s -w" cert-manager
    crds="$out/cert-manager-crds"
    if [[ ! -f "$crds/$cert_manager_version" ]]; then
        module_dir="$(cd "$here/cert-manager" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
        rm -rf "$crds" && mkdir -p "$crds"
        cp "$module_dir"/deploy/crds/*.yaml "$crds/" && chmod u+w "$crds"/*.yaml
        touch "$crds/$cert_manager_version"
    fi
    echo "$out"
    exit 0
fi
if $with_conformance; then
    build conformance "-s -w" gateway-conformance.test
    build echo "-s -w" echo-server echo-client echo-cert.crt echo-cert.key
    echo "$out"
    exit 0
fi
build etcd "-s -w" etcd
build kube-apiserver "-s -w$version_ldflags" kube-apiserver
if $with_node; then
    build node "-s -w$version_ldflags" kubelet kube-scheduler kube-controller-manager kube-proxy
    build coredns "-s -w" coredns
    build pods "-s -w" pause app
fi

cat >"$out/VERSIONS" <<EOF
kube-apiserver $k8s_version
etcd $etcd_version
kubelet, kube-scheduler, kube-controller-manager, kube-proxy $k8s_version
coredns $coredns_version
vault $vault_version (built by build.sh vault)
cert-manager $cert_manager_version (built by build.sh cert-manager)
gateway-conformance.test $conformance_version, echo-server and echo-client istio.io/istio $istio_version (built by build.sh conformance)
$(go env GOVERSION)
EOF

echo "$out"
