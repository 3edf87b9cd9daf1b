package web

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestHandlerServesThePage(t *testing.T) {
	srv := httptest.NewServer(http.StripPrefix("/call", Handler()))
	defer srv.Close()
	for path, want := range map[string]string{
		"/call/":         `<button id="call"`,
		"/call/call.js":  "fetch(endpoint",
		"/call/call.css": "#events",
		"/call/view.js":  "overtalk",
	} {
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d, no %q", path, res.StatusCode, want)
		}
		if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("%s: Content-Security-Policy %q lets the page send its token elsewhere", path, csp)
		}
		if rp := res.Header.Get("Referrer-Policy"); rp != "no-referrer" {
			t.Errorf("%s: Referrer-Policy %q", path, rp)
		}
	}
}

// TestPageIsSelfContained: the page loads nothing from another origin (no scripts, styles, fonts
// or images from a CDN), so it works offline and its CSP holds; and it never writes event text
// as markup.
func TestPageIsSelfContained(t *testing.T) {
	external := regexp.MustCompile(`(?i:(src|href)\s*=\s*["']?(https?:)?//)|url\(|@import|@font-face`)
	markup := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function`)
	err := fs.WalkDir(static, "static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(path)
		if err != nil {
			return err
		}
		if m := external.Find(b); m != nil {
			t.Errorf("%s loads %q from elsewhere", path, m)
		}
		if m := markup.Find(b); m != nil {
			t.Errorf("%s uses %q: event text must reach the page as text", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
