// Command app is the test node's demo workload. As a server it answers "/"
// with its pod name (and the X-Via header it was sent, so a proxy in front of
// it shows) and "/fetch?url=U" with the status and body of a GET of U, so tests
// drive pod-to-pod, pod-to-Service and DNS traffic from inside a pod. With
// ERROR_EVERY=N every Nth request to a path other than /healthz (its probes')
// answers 500: a bad canary. The image has no shell or curl: `app get URL` is
// the client that `kubectl exec` runs.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

var client = &http.Client{Timeout: 5 * time.Second}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "get" {
		status, body, err := get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("%d %s", status, body)
		return
	}
	every, err := strconv.Atoi(getenv("ERROR_EVERY", "0"))
	if err != nil {
		log.Fatalf("ERROR_EVERY: %v", err)
	}
	serve(":"+getenv("PORT", "8080"), getenv("POD_NAME", "app"), int64(every))
}

func serve(addr, name string, errorEvery int64) {
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		if errorEvery > 0 && served.Add(1)%errorEvery == 0 {
			http.Error(w, fmt.Sprintf("%s fails every %dth request", name, errorEvery), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "hello from %s\n", name)
		if via := r.Header.Get("X-Via"); via != "" {
			fmt.Fprintf(w, "via %s\n", via)
		}
	})
	mux.HandleFunc("/fetch", func(w http.ResponseWriter, r *http.Request) {
		status, body, err := get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "%d %s", status, body)
	})
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}

func get(url string) (int, []byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

func getenv(key, fallback string) string {
	if value := os.Getenv(key); value != "" {
		return value
	}
	return fallback
}
