package sip

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A DTMF event during a secure pause says a key was pressed, never which.
func TestMaskedDTMFHidesDigit(t *testing.T) {
	d := dtmfData{Digit: "7", Event: 7, Leg: "caller", MediaTS: 800, Seq: 5, Rate: 8000, DurationMS: 120, Ended: true}
	b, err := json.Marshal(maskedDTMF{dtmfData: d, Masked: true})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["digit"]; ok || strings.Contains(string(b), `"7"`) {
		t.Errorf("masked event %s carries the digit", b)
	}
	if _, ok := m["event"]; ok {
		t.Errorf("masked event %s carries the event code", b)
	}
	if m["masked"] != true || m["duration_ms"] != float64(120) || m["seq"] != float64(5) {
		t.Errorf("masked event %s: want masked, duration_ms and seq", b)
	}
}

// During a secure pause the digits a caller sends as SIP INFO are published masked; after the
// resume they are published as before.
func TestInfoDTMFMaskedWhilePaused(t *testing.T) {
	e := startEnv(t, 1, nil)
	u := newUAC(t, e.addr)
	id := newCallID("pci")
	res := u.invite(id, "")
	if codeOf(res) != "200" {
		t.Fatalf("call: %s", res)
	}
	tag := toTagRe.FindStringSubmatch(res)[1]
	calls := e.st.Ingest.Calls()
	if len(calls) != 1 {
		t.Fatalf("%d calls on ingest", len(calls))
	}
	if rep := calls[0].SetPaused(true, "card", "agent-7"); !rep.OK {
		t.Fatalf("pause: %+v", rep)
	}
	if r := u.request("INFO", id, tag, 2, "", "application/dtmf-relay", "Signal=4\r\nDuration=160\r\n"); codeOf(r) != "200" {
		t.Errorf("INFO while paused: %s", r)
	}
	calls[0].SetPaused(false, "card taken", "agent-7")
	if r := u.request("INFO", id, tag, 3, "", "application/dtmf", "7"); codeOf(r) != "200" {
		t.Errorf("INFO after the resume: %s", r)
	}
	eventually(t, 5*time.Second, "two dtmf events", func() bool { return len(e.events.of("dtmf")) == 2 })
	evs := e.events.of("dtmf")
	if s := string(evs[0].Data); !strings.Contains(s, `"masked":true`) || strings.Contains(s, `"digit"`) || strings.Contains(s, `"4"`) {
		t.Errorf("dtmf event during the pause: %s, want it masked", s)
	}
	var d dtmfData
	if err := json.Unmarshal(evs[1].Data, &d); err != nil || d.Digit != "7" || strings.Contains(string(evs[1].Data), "masked") {
		t.Errorf("dtmf event after the resume: %s", evs[1].Data)
	}
}
