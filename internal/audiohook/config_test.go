package audiohook

import (
	"strings"
	"testing"
)

// A key file is a token file (internal/tokenfile) whose third field is the base64 client secret,
// or "-" for a key that accepts unsigned requests.
func TestParseKeys(t *testing.T) {
	keys, err := ParseKeys(strings.NewReader("# tenant key secret\nacme " + testKey + " " + testSecret + "\nglobex open-key-1234 -\n"))
	if err != nil || len(keys) != 2 || keys[testKey].Tenant != "acme" || len(keys[testKey].Secret) != 32 ||
		keys["open-key-1234"].Tenant != "globex" || keys["open-key-1234"].Secret != nil {
		t.Fatalf("%+v %v", keys, err)
	}
	for bad, want := range map[string]string{
		"acme " + testKey + "\n":                                              "want",
		"acme short " + testSecret + "\n":                                     "line 1: a token must be 8-256",
		"acme " + testKey + " not-base64!\n":                                  "line 1: the client secret",
		"acme " + testKey + " c2hvcnQ=\n":                                     "line 1: the client secret",
		"acme " + testKey + " -\nglobex " + testKey + " " + testSecret + "\n": "line 2: duplicate token",
		"a.b " + testKey + " -\n":                                             "line 1:",
	} {
		if _, err := ParseKeys(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "audiohook: key file") {
			t.Errorf("%q: %v, want an error with %q", bad, err, want)
		}
	}
}
