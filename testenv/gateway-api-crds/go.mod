// Pins the Gateway API module whose config/crd/standard/ holds the official standard-channel CRDs
// (HTTPRoute) gitmesh's schema is compared with and `gitmesh install crds` ships; go.sum holds its
// checksum. Nothing is built from it.
module gitmesh.local/testenv/gateway-api-crds

go 1.21

require sigs.k8s.io/gateway-api v1.6.3
