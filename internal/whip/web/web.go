// Package web is the browser call page that ingest serves: a Call button that sends the
// microphone to the WHIP endpoint, or a Watch field that follows any call of the token's tenant
// by its id (a SIP call, say); and the call as people read one, drawn from the events workers
// publish (read from the endpoint's Server-Sent Events streams): per leg a speech timeline with
// DTMF markers and a live level meter, the overtalk, and when the call ends its accounting
// (frames, losses by cause, duplicates, gaps). The page is static, embedded in the binary, and
// loads nothing from elsewhere (it works offline).
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
// WHIP endpoint at "/whip" on its own origin unless ?whip=<path> names another path there. The
// bearer token is typed into the page (kept in the tab's sessionStorage) and sent as an
// Authorization header on every request, the event stream's included; a ?token= in the page's
// URL is not read, and is removed from the address bar and history. The page talks to its own
// origin only (Content-Security-Policy connect-src 'self') and sends no Referer.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; style-src 'self'; frame-ancestors 'none'")
		w.Header().Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}
