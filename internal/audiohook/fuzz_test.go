package audiohook

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// FuzzSignatureInput: any Signature-Input and Signature headers are refused or accepted without
// a panic, and a parse that succeeds serializes back to a value the parser accepts again.
func FuzzSignatureInput(f *testing.F) {
	f.Add(`sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" "audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";nonce="o+XHWkJlYAglk1XS8X5T9S+j";alg="hmac-sha256";created=1796358400;expires=1796358430`,
		`sig1=:UbzCyOzr5HP+SYn1mKfdAXh22DIsftWW7JYkKIz+pMo=:`)
	f.Add(`sig1=("a;b" "c\"d");nonce="x;y";created=1`, `sig1=::`)
	f.Add(`=(`, `:`)
	a := newAuthenticator(&Config{Keys: map[string]Key{"k": {Tenant: "t", Secret: []byte("s")}}, SignatureMaxAge: 10 * time.Second, ClockSkew: 3 * time.Second})
	f.Fuzz(func(t *testing.T, input, sig string) {
		if p, err := parseSignatureInput(input); err == nil {
			if _, err := parseSignatureInput(p.label + "=" + p.serialize()); err != nil {
				t.Fatalf("%q parsed but its serialization %q does not: %v", input, p.serialize(), err)
			}
		}
		r := httptest.NewRequest(http.MethodGet, "http://h/p", nil)
		r.Header.Set(hdrAPIKey, "k")
		r.Header.Set(hdrSigInput, input)
		r.Header.Set(hdrSig, sig)
		if _, err := a.check(r, time.Unix(1796358401, 0)); err == nil {
			t.Fatalf("a made-up signature passed: %q %q", input, sig)
		}
	})
}

// FuzzDuration: parseDuration never panics, never returns a negative or over-long duration, and
// reads what formatDuration writes.
func FuzzDuration(f *testing.F) {
	for _, s := range []string{"PT0S", "PT6.3S", "PT1H2M3.5S", "PT", "P1D", "PT-1S", "PT1e9S", "PTNaNS"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDuration(s)
		if err != nil {
			return
		}
		if d < 0 || d > maxDuration {
			t.Fatalf("%q = %v", s, d)
		}
		if back, err := parseDuration(formatDuration(d)); err != nil || back != d {
			t.Fatalf("%q = %v, formatted %q, read back %v %v", s, d, formatDuration(d), back, err)
		}
	})
}
