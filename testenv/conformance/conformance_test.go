// The Gateway API conformance suite as a test binary: build.sh conformance runs
// `go test -c` here, and tests/node/test_conformance.py runs the binary against the
// test node with the suite's own flags (-conformance-profiles, -supported-features, ...).
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
