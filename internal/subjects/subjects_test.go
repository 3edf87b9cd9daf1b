package subjects

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"acme", true}, {"call-1_x", true}, {"a@b", true},
		{"", false}, {"a.b", false}, {"*", false}, {">", false}, {"a b", false}, {"a\tb", false},
		{strings.Repeat("x", MaxToken), true}, {strings.Repeat("x", MaxToken+1), false},
	} {
		if got := Valid(tc.in); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestEncode(t *testing.T) {
	for _, in := range []string{"plain", "a84b4c76e66710@pc33.atlanta.com", "has space", "~tilde", "*>", strings.Repeat("é", 80)} {
		tok := Encode(in)
		if !Valid(tok) {
			t.Errorf("Encode(%q) = %q, not a valid token", in, tok)
		}
		if Encode(in) != tok {
			t.Errorf("Encode(%q) not deterministic", in)
		}
		if back, ok := Decode(tok); ok && back != in {
			t.Errorf("Decode(Encode(%q)) = %q", in, back)
		}
	}
}

func TestEncodeHashedTokensCannotCollideWithEncodedOnes(t *testing.T) {
	long := strings.Repeat("0x@y.", 20)
	tok := Encode(long)
	if !strings.HasPrefix(tok, "~=") {
		t.Fatalf("Encode of a long id = %q, want the hashed form", tok)
	}
	// Any string whose base64url is short enough is encoded as "~" + base64url, which never
	// starts with '=', so it cannot equal a hashed token.
	for _, s := range []string{"\x87\xbf[{nt", "h", strings.Repeat("a", 47)} {
		if e := Encode(s); strings.HasPrefix(e, "~=") {
			t.Errorf("Encode(%q) = %q takes the hashed prefix", s, e)
		}
		if back, ok := Decode(Encode(s)); !ok || back != s {
			t.Errorf("Decode(Encode(%q)) = %q, %v", s, back, ok)
		}
	}
}

func TestParseAudio(t *testing.T) {
	s := Audio("acme", "c1", "caller")
	a, err := ParseAudio(s)
	if err != nil || a != (AudioSubject{"acme", "c1", "caller"}) {
		t.Fatalf("ParseAudio(%q) = %+v, %v", s, a, err)
	}
	for _, bad := range []string{"audio.acme.c1", "events.acme.c1.x", "audio.acme.c1.a.b", "audio..c1.a", "audio.acme.*.a", ".acme.c1.a", "audioacme.c1.a.b", "audio"} {
		if _, err := ParseAudio(bad); err == nil {
			t.Errorf("ParseAudio(%q) accepted", bad)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = ParseAudio(s) }); n != 0 {
		t.Errorf("ParseAudio allocates %v", n)
	}
}

func TestParseEventAndHeartbeat(t *testing.T) {
	e, err := ParseEvent(Event("acme", "c1", "speech"))
	if err != nil || e != (EventSubject{"acme", "c1", "speech"}) {
		t.Fatalf("ParseEvent = %+v, %v", e, err)
	}
	for _, bad := range []string{"events.acme.c1", "audio.acme.c1.x", ".acme.c1.x", "eventsacme.c1.x.y", "events.acme.c1.x.y"} {
		if _, err := ParseEvent(bad); err == nil {
			t.Errorf("ParseEvent(%q) accepted", bad)
		}
	}
	c, id, err := ParseHeartbeat(Heartbeat(Worker, "w1"))
	if err != nil || c != Worker || id != "w1" {
		t.Fatalf("ParseHeartbeat = %q %q %v", c, id, err)
	}
	if _, _, err := ParseHeartbeat(HeartbeatCalls(Worker, "w1")); err == nil {
		t.Error("ParseHeartbeat took a call-list subject")
	}
	c, id, err = ParseHeartbeatCalls(HeartbeatCalls(Ingest, "i1"))
	if err != nil || c != Ingest || id != "i1" {
		t.Fatalf("ParseHeartbeatCalls = %q %q %v", c, id, err)
	}
	for _, bad := range []string{Heartbeat(Worker, "w1"), "hb.worker.calls", "hb.worker.w1.x.calls", "hb..w1.calls"} {
		if _, _, err := ParseHeartbeatCalls(bad); err == nil {
			t.Errorf("ParseHeartbeatCalls(%q) = nil error", bad)
		}
	}
}

func FuzzAudioRoundTrip(f *testing.F) {
	f.Add("acme", "a84b4c76e66710@pc33.atlanta.com", "caller")
	f.Add("t", "c", "0")
	f.Add("a.b", "*", ">")
	f.Fuzz(func(t *testing.T, tenant, call, leg string) {
		tt, cc, ll := Encode(tenant), Encode(call), Encode(leg)
		a, err := ParseAudio(Audio(tt, cc, ll))
		if err != nil {
			t.Fatalf("encoded tokens %q %q %q do not parse: %v", tt, cc, ll, err)
		}
		if a.Tenant != tt || a.Call != cc || a.Leg != ll {
			t.Fatalf("round trip: %+v", a)
		}
		if back, ok := Decode(cc); ok && back != call {
			t.Fatalf("Decode(%q) = %q, want %q", cc, back, call)
		}
	})
}

func BenchmarkAudio(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Audio("acme", "call-123456", "caller")
	}
}

func BenchmarkParseAudio(b *testing.B) {
	s := Audio("acme", "call-123456", "caller")
	b.ReportAllocs()
	for b.Loop() {
		_, _ = ParseAudio(s)
	}
}

func TestParseAPI(t *testing.T) {
	for _, c := range []struct{ subject, tenant, verb string }{
		{"router.api.calls", "", "calls"},
		{TenantAPI("acme", "call"), "acme", "call"},
	} {
		tenant, verb, err := ParseAPI(c.subject)
		if err != nil || tenant != c.tenant || verb != c.verb {
			t.Errorf("ParseAPI(%q) = %q, %q, %v; want %q, %q", c.subject, tenant, verb, err, c.tenant, c.verb)
		}
	}
	for _, bad := range []string{"router.place", "router.api.", "router.api.a.b.c", "router.api.a.", "router.api..calls"} {
		if _, _, err := ParseAPI(bad); err == nil {
			t.Errorf("ParseAPI(%q) accepted", bad)
		}
	}
}
