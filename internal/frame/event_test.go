package frame

import "testing"

func TestTelephoneEventRoundTrip(t *testing.T) {
	in := []TelephoneEvent{{Event: 11, End: true, Volume: 10, DurationMS: 120, Start: 48000}, {Event: 3, Volume: 63, DurationMS: 65535, Start: 1<<32 - 1}}
	var p []byte
	for _, e := range in {
		p = AppendTelephoneEvent(p, e)
	}
	p = append(p, 1, 2, 3) // a partial record is ignored
	for i, want := range in {
		got, ok := TelephoneEventAt(p, i)
		if !ok || got != want {
			t.Errorf("record %d = %+v %v, want %+v", i, got, ok, want)
		}
	}
	if _, ok := TelephoneEventAt(p, 2); ok {
		t.Error("partial record parsed")
	}
	if DTMFDigit(11) != '#' || DTMFDigit(16) != 0 {
		t.Error("DTMFDigit")
	}
}

func FuzzTelephoneEvent(f *testing.F) {
	f.Add([]byte{1, 0x8a, 100, 0, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		for i := 0; ; i++ {
			e, ok := TelephoneEventAt(p, i)
			if !ok {
				break
			}
			// Re-encoding gives back the record, except bit 6 (R), which is not kept.
			if b := AppendTelephoneEvent(nil, e); string(b[2:]) != string(p[i*8+2:i*8+8]) || b[0] != p[i*8] || b[1] != p[i*8+1]&^0x40 {
				t.Fatalf("record %d: %x → %+v → %x", i, p[i*8:i*8+8], e, b)
			}
		}
	})
}
