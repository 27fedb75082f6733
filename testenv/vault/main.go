// Command vault is HashiCorp Vault 1.13.1 (MPL-2.0), built from its
// Go module for gitmesh's tests of the Vault PKI certificate provider. It runs
// as `vault server -dev` with the PKI secrets engine mounted by the tests.

// A database plugin's library (gosnowflake) parses CA certificates with negative
// serial numbers at start-up, which Go refuses since 1.23 unless told otherwise.
//
//go:debug x509negativeserial=1
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
