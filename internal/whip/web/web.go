// Package web is the browser call page that ingest serves: a Call button that sends the
// microphone to the WHIP endpoint, the call's state, and the call's events as workers publish
// them (read from the endpoint's per-session Server-Sent Events stream). The page is static and
// embedded in the binary.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the call page and its script. Mount it under a prefix with http.StripPrefix,
// e.g. mux.Handle("/call/", http.StripPrefix("/call", web.Handler())). The page POSTs to the
// WHIP endpoint at "/whip" unless its URL says otherwise (?whip=<url>&token=<bearer token>).
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src *; style-src 'self'")
		files.ServeHTTP(w, r)
	})
}
