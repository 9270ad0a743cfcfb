// The peer suite's sink (bench/peers): answers 200 at once, counts deliveries and unique ce-id
// headers, and remembers when each id first arrived, so the suite can tell duplicates, losses and
// publish→sink latency. Written in Go so that at Kyma's 2,000-3,000 deliveries/s it is never what
// limits either system.
//
//	GET /stats  -> {"total", "unique", "first", "last"} (times: Unix seconds)
//	GET /times  -> {"<ce-id>": <Unix seconds of its first arrival>, ...}
//	POST /reset -> forgets everything (204)
//
// usage: sink 127.0.0.1:PORT
package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

type record struct {
	mu          sync.Mutex
	arrivals    map[string]float64
	total       int64
	first, last float64
}

func (r *record) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.arrivals = make(map[string]float64, 1<<16)
	r.total, r.first, r.last = 0, 0, 0
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func main() {
	r := &record{}
	r.reset()
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		out := map[string]any{"total": r.total, "unique": len(r.arrivals), "first": r.first, "last": r.last}
		r.mu.Unlock()
		json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("/times", func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		defer r.mu.Unlock()
		json.NewEncoder(w).Encode(r.arrivals)
	})
	mux.HandleFunc("/reset", func(w http.ResponseWriter, _ *http.Request) {
		r.reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		now := seconds(time.Now())
		id := req.Header.Get("ce-id")
		r.mu.Lock()
		r.total++
		if _, seen := r.arrivals[id]; !seen && id != "" {
			r.arrivals[id] = now
		}
		if r.first == 0 {
			r.first = now
		}
		r.last = now
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	if err := (&http.Server{Addr: os.Args[1], Handler: mux}).ListenAndServe(); err != nil {
		panic(err)
	}
}
