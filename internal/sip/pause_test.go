package sip

import (
	"encoding/json"
	"strings"
	"testing"
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
