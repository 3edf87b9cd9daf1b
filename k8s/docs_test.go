package k8s

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docs/deploy.md names only metrics the binaries register, so what it tells operators to watch
// exists.
func TestDeployGuideNamesRegisteredMetrics(t *testing.T) {
	guide, err := os.ReadFile("../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	name := regexp.MustCompile(`(?:Name:\s*|NewDesc\()"(callrouter_[a-z_]+)"`) // options' and descriptors' names
	err = filepath.WalkDir("../internal", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		for _, m := range name.FindAllSubmatch(src, -1) {
			registered[string(m[1])] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	named := regexp.MustCompile(`callrouter_[a-z_]+[a-z]`).FindAllString(string(guide), -1)
	if len(named) < 10 {
		t.Fatalf("docs/deploy.md names %d metrics; the what-to-watch table is gone", len(named))
	}
	for _, m := range named {
		if !registered[m] {
			t.Errorf("docs/deploy.md names %s, which no binary registers", m)
		}
	}
}

// Every relative link in docs/*.md, and every docs/<file>.md the manifests' comments name, leads
// to a file of the tree (a renamed guide leaves no dangling reference behind).
func TestDocsReferencesResolve(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)#:\s]+)(#[^)]*)?\)`)
	pages, err := filepath.Glob("../docs/*.md")
	if err != nil || len(pages) < 5 {
		t.Fatalf("docs: %v %v", pages, err)
	}
	for _, p := range pages {
		text, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllSubmatch(text, -1) {
			if _, err := os.Stat(filepath.Join(filepath.Dir(p), string(m[1]))); err != nil {
				t.Errorf("%s links %s: %v", p, m[1], err)
			}
		}
	}
	named := regexp.MustCompile(`docs/[a-z0-9_-]+\.md`)
	err = filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		text, err := os.ReadFile(path)
		for _, m := range named.FindAll(text, -1) {
			if _, serr := os.Stat(filepath.Join("..", string(m))); serr != nil {
				t.Errorf("k8s/%s names %s: %v", path, m, serr)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
