// Tests that hold the module's structure: import direction and package documentation.
package internal_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/callrouter/callrouter/"

// forbidden maps a package to the module packages it must not import (directly).
var forbidden = map[string][]string{
	"internal/frame":     {"internal/"},
	"internal/subjects":  {"internal/"},
	"internal/wav":       {"internal/"},
	"internal/session":   {"internal/wire", "internal/bus", "internal/ingest", "internal/router", "internal/worker"},
	"internal/wire":      {"internal/bus", "internal/ingest", "internal/router", "internal/worker", "internal/proc"},
	"internal/bus":       {"internal/ingest", "internal/router", "internal/worker", "internal/proc", "internal/stack"},
	"internal/proc":      {"internal/worker", "internal/ingest", "internal/router", "internal/stack", "internal/bus"},
	"internal/ingest":    {"internal/router", "internal/worker", "internal/stack", "internal/cli"},
	"internal/router":    {"internal/ingest", "internal/worker", "internal/stack", "internal/cli"},
	"internal/worker":    {"internal/ingest", "internal/router", "internal/stack", "internal/cli"},
	"internal/audio":     {"internal/proc", "internal/worker", "internal/ingest", "internal/router", "internal/stack", "internal/bus", "internal/wire", "internal/session"},
	"internal/sip":       {"internal/router", "internal/worker", "internal/stack", "internal/cli", "internal/whip"},
	"internal/sdp":       {"internal/ingest", "internal/router", "internal/worker", "internal/stack", "internal/sip"},
	"internal/whip":      {"internal/router", "internal/worker", "internal/stack", "internal/cli"},
	"internal/timeline":  {"internal/"},
	"internal/mmsg":      {"internal/"}, // recvmmsg batches: a leaf under sip and whip
	"internal/trace":     {"internal/"}, // OpenTelemetry setup and the NATS header carrier; below bus
	"internal/natsauth":  {"internal/ingest", "internal/router", "internal/worker", "internal/stack", "internal/cli", "internal/proc"},
	"internal/twilio":    {"internal/router", "internal/worker", "internal/stack", "internal/cli", "internal/whip", "internal/sip", "internal/audiohook"},
	"internal/audiohook": {"internal/router", "internal/worker", "internal/stack", "internal/cli", "internal/whip", "internal/sip"},
	"internal/player":    {"internal/router", "internal/worker", "internal/stack", "internal/cli"},
	"internal/sources":   {"internal/router", "internal/worker", "internal/stack", "internal/cli", "internal/proc"},
	"hostile":            {"internal/"}, // tests only: it attacks the built binaries from outside
	"loadtest/inproc":    {"internal/cli"},
	// A client: it speaks the protocol and does not link the services it steers.
	"internal/ctl": {"internal/router", "internal/worker", "internal/stack"},
}

// only maps a package to the only module packages it may import (directly).
var only = map[string][]string{
	// The load tester's black-box client speaks callrouter's wire contract and reads recordings,
	// nothing more: the services run in its process only through loadtest/inproc, which
	// cmd/loadtest hands it.
	"loadtest": {"internal/frame", "internal/subjects", "internal/wire", "internal/session",
		"internal/wav", "internal/filesrc", "internal/timeline", "loadtest/account"},
	"loadtest/account":   {},
	"internal/tokenfile": {"internal/subjects"}, // parses credential files; every transport may use it
	// A reader: a black-box client that cuts recordings links no service (player plays them into ingest).
	"internal/filesrc":  {"internal/frame", "internal/session", "internal/wav"},
	"loadtest/probe":    {"internal/frame", "internal/proc", "loadtest/account"}, // linked into a worker only with -tags loadtest
	"loadtest/capacity": {},                                                      // the capacity model: arithmetic on reports
	// An OTLP/HTTP receiver for tests; Install points internal/trace at it, and that is all it links.
	"internal/trace/tracetest": {"internal/trace"},
}

// stdlibOnly lists packages that import nothing outside the standard library.
var stdlibOnly = []string{"loadtest/capacity"}

// packages returns every directory under the module root holding non-test Go files.
func packages(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			rel, _ := filepath.Rel("..", filepath.Dir(path))
			out[filepath.ToSlash(rel)] = append(out[filepath.ToSlash(rel)], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestImportDirection(t *testing.T) {
	for pkg, files := range packages(t) {
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path := strings.Trim(imp.Path.Value, `"`)
				if slices.Contains(stdlibOnly, pkg) && strings.Contains(strings.Split(path, "/")[0], ".") {
					t.Errorf("%s imports %s: %s may import only the standard library", f, path, pkg)
				}
				if !strings.HasPrefix(path, module) {
					continue
				}
				target := strings.TrimPrefix(path, module)
				if strings.HasPrefix(target, "cmd/") {
					t.Errorf("%s imports %s: nothing imports a main", f, target)
				}
				for _, bad := range forbidden[pkg] {
					if strings.HasPrefix(target, bad) {
						t.Errorf("%s imports %s: %s must not depend on %s", f, target, pkg, bad)
					}
				}
				if allowed, ok := only[pkg]; ok && !slices.Contains(allowed, target) {
					t.Errorf("%s imports %s: %s may import only %v", f, target, pkg, allowed)
				}
			}
		}
	}
}

func TestEveryPackageIsDocumented(t *testing.T) {
	for pkg, files := range packages(t) {
		documented := false
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil && (strings.HasPrefix(af.Doc.Text(), "Package "+af.Name.Name+" ") || strings.HasPrefix(af.Doc.Text(), "Command ")) {
				documented = true
			}
		}
		if !documented {
			t.Errorf("package %s has no \"// Package %s ...\" (or \"// Command ...\") comment stating its job", pkg, filepath.Base(pkg))
		}
	}
}
