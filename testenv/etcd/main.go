// Command etcd is the upstream etcd 3.5 server, built from the go.etcd.io/etcd
// modules as the storage backend for gitmesh's test kube-apiservers.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
