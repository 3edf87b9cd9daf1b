package main

import (
	"flag"
	"net/http"
	"net/http/pprof"
)

// pprofFlag registers -pprof: Go's runtime profiles on the -http listener, off by default.
func pprofFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("pprof", false, "serve Go's runtime profiles (net/http/pprof) under /debug/pprof/ on -http, never on -whip-listen "+
		"(off: a profile costs CPU while it is taken and shows the code; -http must stay internal)")
}

// mountPprof serves the profiles under /debug/pprof/ on mux, as net/http/pprof does on
// http.DefaultServeMux (which no callrouter listener serves).
func mountPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
