package tokenfile

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	es, err := Parse(strings.NewReader("# tenants\nacme  s3cret-acme-token x y\n\n  globex tok-globex-123 - z  \n"),
		Format{Usage: "<tenant> <token> <a> <b>", MinToken: 8, Fields: 2})
	if err != nil || len(es) != 2 {
		t.Fatalf("%+v %v", es, err)
	}
	if e := es[1]; e.Line != 4 || e.Tenant != "globex" || e.Token != "tok-globex-123" || strings.Join(e.Fields, ",") != "-,z" {
		t.Errorf("second entry %+v", e)
	}
	for bad, want := range map[string]string{
		"acme\n":                                  `line 1: want "<tenant> <token>"`,
		"acme tok-aaaaaaa extra\n":                `line 1: want "<tenant> <token>"`,
		"# c\nacme short\n":                       "line 2: a token must be 8-256",
		"a.b long-enough-token\n":                 "line 1:",
		"acme tok-aaaaaaa\nbeta tok-aaaaaaa\n":    "line 2: duplicate token",
		"acme tok-\x01aaaaaa\n":                   "printable ASCII",
		"acme " + strings.Repeat("t", 257) + "\n": "8-256",
		"acme " + strings.Repeat("t", MaxLine):    "too long",
	} {
		if _, err := Tokens(strings.NewReader(bad), 8); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, want an error with %q", bad, err, want)
		}
	}
	m, err := Tokens(strings.NewReader("acme sixteen-chars-tok\n"), 16)
	if err != nil || m["sixteen-chars-tok"] != "acme" {
		t.Errorf("%v %v", m, err)
	}
	if _, err := Tokens(strings.NewReader("acme fifteen-chars\n"), 19); err == nil {
		t.Error("a token shorter than the minimum accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add("acme s3cret-acme-token x\n# c\n")
	f.Fuzz(func(t *testing.T, s string) {
		es, err := Parse(strings.NewReader(s), Format{Usage: "<tenant> <token> <x>", MinToken: 8, Fields: 1})
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range es {
			if Check(e.Token, 8) != nil || seen[e.Token] || len(e.Fields) != 1 || e.Tenant == "" {
				t.Fatalf("entry %+v passed the parser", e)
			}
			seen[e.Token] = true
		}
	})
}
