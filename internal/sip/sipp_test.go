package sip

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/subjects"
)

// callKeys returns the "tenant/call" keys of the calls the workers saw.
func callKeys() []string {
	var out []string
	for k := range rec.stoppedCalls() {
		out = append(out, k)
	}
	return out
}

// TestSIPpPcapEveryFrame plays SIPp's uac_pcap (PCMA, 30 ms packets, then an RFC 2833 '1') and
// checks that the worker got every 20 ms frame, in order, with the pcap's exact audio, and the
// DTMF digit as an event.
func TestSIPpPcapEveryFrame(t *testing.T) {
	e := startEnv(t, 1, nil)
	dir := pcapDir(t)
	e.sipp(t, dir, 40*time.Second, "-sn", "uac_pcap", "-m", "1", "-l", "1")
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	key := callKeys()[0] + "/0"
	l := rec.snapshot(key)
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	if len(want) != 236*240 {
		t.Fatalf("pcap has %d bytes of audio, want %d", len(want), 236*240)
	}
	frames := len(want) / 160
	checkPcapLeg(t, key, l, want)
	if len(l.seqs) < frames {
		t.Errorf("worker processed %d frames, want at least %d", len(l.seqs), frames)
	}
	if l.codec != frame.CodecPCMA || l.name != "caller" {
		t.Errorf("leg codec %v name %q, want pcma caller", l.codec, l.name)
	}
	eventually(t, 5*time.Second, "a dtmf event", func() bool { return len(e.events.of("dtmf")) == 1 })
	var d dtmfData
	ev := e.events.of("dtmf")[0]
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.Digit != "1" || d.Leg != "caller" || !d.Ended || d.DurationMS != 280 || d.MediaTS < uint64(len(want)) {
		t.Errorf("dtmf event %+v, want digit 1 on caller, ended, 280 ms, after the audio", d)
	}
	if tok := strings.Split(callKeys()[0], "/")[1]; ev.Call != tok {
		t.Errorf("dtmf event call %q, want %q", ev.Call, tok)
	}
	starts := e.events.of("start")
	if len(starts) != 1 {
		t.Fatalf("%d start events", len(starts))
	}
	var sd struct {
		Meta map[string]string `json:"meta"`
	}
	_ = json.Unmarshal(starts[0].Data, &sd)
	if cid := sd.Meta["sip.call_id"]; cid == "" || subjects.Encode(cid) != starts[0].Call {
		t.Errorf("call token %q is not subjects.Encode of the Call-ID %q", starts[0].Call, cid)
	}
	if sd.Meta["caller"] != "sipp" {
		t.Errorf("caller metadata %q, want sipp", sd.Meta["caller"])
	}
}

// checkPcapLeg checks that a leg carried the pcap's audio as its first frames, exactly, in
// order, with nothing lost, duplicated or filled; after the audio only gap-filled silence
// frames (the sender is silent until its BYE) may follow.
func checkPcapLeg(t testing.TB, key string, l legLog, want []byte) bool {
	t.Helper()
	frames := len(want) / 160
	ok := true
	for i, s := range l.seqs {
		if s != uint32(i) {
			t.Errorf("%s: frame %d has sequence %d", key, i, s)
			return false
		}
	}
	if len(l.seqs) < frames || l.dups != 0 || len(l.gaps) != 0 || l.gapFilled != len(l.seqs)-frames {
		t.Errorf("%s: %d frames (want %d of audio then silence), %d gap-filled (first %v), %d dups, gaps %v", key, len(l.seqs), frames,
			l.gapFilled, l.filledAt[:min(5, len(l.filledAt))], l.dups, l.gaps)
		ok = false
	}
	if len(l.payload) < len(want) || !bytes.Equal(l.payload[:len(want)], want) {
		t.Errorf("%s: audio differs from the pcap's", key)
		ok = false
	}
	return ok
}

// TestSIPpDTMFDigits plays every RFC 2833 pcap SIPp ships in one call and checks the digits.
func TestSIPpDTMFDigits(t *testing.T) {
	e := startEnv(t, 1, nil)
	dir := pcapDir(t)
	digits := []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "star", "pound"}
	writeScenario(t, dir, "dtmf.xml", dtmfScenario(digits))
	e.sipp(t, dir, 40*time.Second, "-sf", "dtmf.xml", "-m", "1", "-l", "1")
	eventually(t, 10*time.Second, "12 dtmf events", func() bool { return len(e.events.of("dtmf")) >= 12 })
	var got []string
	for _, ev := range e.events.of("dtmf") {
		var d dtmfData
		_ = json.Unmarshal(ev.Data, &d)
		got = append(got, d.Digit)
	}
	if want := "1234567890*#"; strings.Join(got, "") != want {
		t.Errorf("digits %q, want %q", strings.Join(got, ""), want)
	}
}

// TestSIPpHundredConcurrentCalls runs 100 concurrent uac_pcap calls and checks every frame of
// every call reached a worker.
func TestSIPpHundredConcurrentCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("100 calls of 9 s")
	}
	const calls = 100
	e := startEnv(t, 2, nil)
	dir := pcapDir(t)
	start := time.Now()
	e.sipp(t, dir, 90*time.Second, "-sn", "uac_pcap", "-m", fmt.Sprint(calls), "-l", fmt.Sprint(calls), "-r", "50")
	t.Logf("100 calls took %v", time.Since(start))
	eventually(t, 15*time.Second, "the workers to stop every call", func() bool { return len(callKeys()) == calls })
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	bad := 0
	for _, k := range callKeys() {
		if !checkPcapLeg(t, k, rec.snapshot(k+"/0"), want) {
			bad++
			if bad > 5 {
				t.Fatalf("more than 5 calls incomplete")
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d calls incomplete", bad, calls)
	}
	if n := len(e.events.of("dtmf")); n != calls {
		t.Errorf("%d dtmf events, want %d", n, calls)
	}
}

// TestSIPpOverTCP plays the uac_pcap call with SIP over TCP.
func TestSIPpOverTCP(t *testing.T) {
	e := startEnv(t, 1, nil)
	dir := pcapDir(t)
	e.sipp(t, dir, 40*time.Second, "-sn", "uac_pcap", "-t", "t1", "-m", "1", "-l", "1")
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	checkPcapLeg(t, callKeys()[0]+"/0", rec.snapshot(callKeys()[0]+"/0"), want)
	starts := e.events.of("start")
	if len(starts) != 1 || !strings.Contains(string(starts[0].Data), `"sip.transport":"tcp"`) {
		t.Errorf("start events %d, want one over tcp", len(starts))
	}
}
