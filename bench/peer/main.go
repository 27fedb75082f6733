// Command peer serves, over ADS, the resources gitmesh computed for ads_bench.py's mesh, from
// go-control-plane's SnapshotCache and server: the reference a Go control plane builds on, side by
// side with gitmesh on the very same bytes and the same load client.
//
// It reads a dump written by `ads_bench.py _dump`: per snapshot key and type URL the resources as
// serialized google.protobuf.Any, in two variants (before and after the TrafficSplit change), and,
// for mTLS, the server's key, certificate and the roots client certificates must chain to. Nodes
// are keyed as gitmesh keys them (identity, service, ports, address from the node's metadata).
//
// It speaks JSON lines: on start {"port": N}; on stdin "change" swaps every key to the other
// variant (SetSnapshot for each key, as a go-control-plane server republishes) and answers
// {"t0": monotonic, "t1": monotonic}; "quit" (or EOF) ends it. RSS and CPU are read from /proc by
// the bench.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	// The resource types a snapshot holds: imported so that their Any bytes unmarshal.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Dump is what ads_bench.py writes: Variants[v][key][typeURL] = serialized Any per resource.
type Dump struct {
	Variants []map[string]map[string][][]byte `json:"variants"`
	TLS      *struct {
		Key   string `json:"key"`
		Cert  string `json:"cert"`
		Roots string `json:"roots"`
	} `json:"tls"`
}

// nodeKey groups nodes as gitmesh's proxy_key does for the bench's sidecars.
type nodeKey struct{}

func (nodeKey) ID(node *core.Node) string {
	fields := node.GetMetadata().GetFields()
	parts := make([]string, 0, len(keyFields))
	for _, name := range keyFields {
		switch value := fields[name].AsInterface().(type) {
		case float64: // a Struct's numbers are doubles; ports are whole
			parts = append(parts, fmt.Sprintf("%d", int64(value)))
		case nil:
			parts = append(parts, "")
		default:
			parts = append(parts, fmt.Sprint(value))
		}
	}
	return strings.Join(parts, "|")
}

// keyFields are ads_bench.py's PEER_KEY_FIELDS.
var keyFields = []string{"namespace", "service_account", "service_namespace", "service",
	"app_port", "outbound_port", "inbound_port", "inbound_address"}

type quiet struct{}

func (quiet) Debugf(string, ...any) {}
func (quiet) Infof(string, ...any)  {}
func (quiet) Warnf(string, ...any)  {}
func (quiet) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "peer: "+format+"\n", args...)
}

func snapshots(variant map[string]map[string][][]byte, version string) (map[string]*cachev3.Snapshot, error) {
	out := make(map[string]*cachev3.Snapshot, len(variant))
	for key, byType := range variant {
		typed := map[resource.Type][]types.Resource{}
		for url, items := range byType {
			// A type with no resources is still versioned, so that a proxy asking for it is answered.
			typed[url] = make([]types.Resource, 0, len(items))
			for _, raw := range items {
				wrapped := &anypb.Any{}
				if err := proto.Unmarshal(raw, wrapped); err != nil {
					return nil, fmt.Errorf("%s %s: %w", key, url, err)
				}
				message, err := wrapped.UnmarshalNew()
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", key, url, err)
				}
				typed[url] = append(typed[url], message)
			}
		}
		snapshot, err := cachev3.NewSnapshot(version, typed)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		// Each type versioned by its content, as gitmesh versions it: a republish re-sends only the
		// types that changed (with one version per snapshot, every type of every key would be).
		for url, items := range byType {
			digest := sha256.New()
			for _, raw := range items {
				digest.Write(raw)
			}
			snapshot.Resources[cachev3.GetResponseType(url)].Version = hex.EncodeToString(digest.Sum(nil))[:16]
		}
		out[key] = snapshot
	}
	return out, nil
}

func emit(data map[string]any) {
	line, _ := json.Marshal(data)
	fmt.Println(string(line))
}

// monotonic is CLOCK_MONOTONIC in seconds, as Python's time.monotonic() on Linux: the bench
// compares stamps across processes.
func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func main() {
	dumpPath := flag.String("dump", "", "resources dumped by ads_bench.py _dump")
	flag.Parse()
	raw, err := os.ReadFile(*dumpPath)
	if err != nil {
		panic(err)
	}
	var dump Dump
	if err := json.Unmarshal(raw, &dump); err != nil {
		panic(err)
	}
	raw = nil
	variants := make([]map[string]*cachev3.Snapshot, len(dump.Variants))
	for i, variant := range dump.Variants {
		if variants[i], err = snapshots(variant, fmt.Sprint(i)); err != nil {
			panic(err)
		}
	}
	dump.Variants = nil
	// Not in ADS mode: the load client, like gitmesh's server, asks for every cluster of the mesh and
	// is sent those its proxy has (ADS mode answers only requests naming no resource it lacks).
	cache := cachev3.NewSnapshotCache(false, nodeKey{}, quiet{})
	ctx := context.Background()
	for key, snapshot := range variants[0] {
		if err := cache.SetSnapshot(ctx, key, snapshot); err != nil {
			panic(err)
		}
	}
	options := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(1 << 16),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{PermitWithoutStream: true}),
	}
	if dump.TLS != nil {
		pair, err := tls.X509KeyPair([]byte(dump.TLS.Cert), []byte(dump.TLS.Key))
		if err != nil {
			panic(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM([]byte(dump.TLS.Roots))
		options = append(options, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{pair},
			ClientCAs:    roots,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		})))
	}
	dump.TLS = nil
	grpcServer := grpc.NewServer(options...)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, serverv3.NewServer(ctx, cache, nil))
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() { _ = grpcServer.Serve(listener) }()
	runtime.GC()
	emit(map[string]any{"port": listener.Addr().(*net.TCPAddr).Port, "keys": len(variants[0])})
	current := 0
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		switch strings.TrimSpace(lines.Text()) {
		case "change":
			current = (current + 1) % len(variants)
			t0 := monotonic()
			for key, snapshot := range variants[current] {
				if err := cache.SetSnapshot(ctx, key, snapshot); err != nil {
					panic(err)
				}
			}
			emit(map[string]any{"t0": t0, "t1": monotonic()})
		case "gc": // as gitmesh's server reads its RSS after gc.collect()
			runtime.GC()
			emit(map[string]any{"ok": true})
		case "trim":
			debug.FreeOSMemory()
			emit(map[string]any{"ok": true})
		case "quit":
			grpcServer.Stop()
			return
		}
	}
	grpcServer.Stop()
}
