package sip

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// streamPort returns the local RTP port of the one call's stream for m= line media.
func (e *env) streamPort(media int) int {
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	for _, c := range e.srv.calls {
		for _, st := range c.streams {
			if c.plans[st.leg].media == media {
				return st.port()
			}
		}
	}
	return 0
}

// TestSIPpSIPREC drives a SIPREC recording session from SIPp: one call, two legs named after
// the participants of the metadata (whose stream order is the reverse of the SDP's), audio of
// each stream on its participant's leg, identities in the call metadata, and the re-INVITE's
// metadata update published.
func TestSIPpSIPREC(t *testing.T) {
	e := startEnv(t, 1, nil)
	dir := pcapDir(t)
	b, err := os.ReadFile("testdata/sipp/siprec.xml")
	if err != nil {
		t.Fatal(err)
	}
	writeScenario(t, dir, "siprec.xml", string(b))
	m2, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	m2port := m2.LocalAddr().(*net.UDPAddr).Port

	sippDone := make(chan struct{})
	go func() {
		defer close(sippDone)
		e.sipp(t, dir, 40*time.Second, "-sf", filepath.Join(dir, "siprec.xml"), "-m", "1", "-l", "1", "-key", "m2port", strconv.Itoa(m2port))
	}()
	// Alice's stream (label 2, the second m= line) comes from the test: 150 frames of 0x55.
	var port int
	eventually(t, 10*time.Second, "the SIPREC call", func() bool { port = e.streamPort(1); return port != 0 })
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	payload := bytes.Repeat([]byte{0x55}, 160)
	const aliceFrames = 150
	start := time.Now()
	for i := 0; i < aliceFrames; i++ {
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 8, SequenceNumber: uint16(1000 + i), Timestamp: uint32(5000 + 160*i), SSRC: 0xa11ce}, Payload: payload}
		raw, _ := pkt.Marshal()
		if _, err := m2.WriteToUDP(raw, dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * 20 * time.Millisecond)))
	}
	<-sippDone
	if t.Failed() {
		return
	}
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { return len(callKeys()) == 1 })

	starts := e.events.of("start")
	if len(starts) != 1 {
		t.Fatalf("%d calls started, want 1", len(starts))
	}
	var sd struct {
		Legs []struct {
			Name string `json:"name"`
		} `json:"legs"`
		Meta map[string]string `json:"meta"`
	}
	if err := json.Unmarshal(starts[0].Data, &sd); err != nil {
		t.Fatal(err)
	}
	if len(sd.Legs) != 2 || sd.Legs[0].Name != "caller" || sd.Legs[1].Name != "agent" {
		t.Fatalf("legs %+v, want caller and agent", sd.Legs)
	}
	for k, want := range map[string]string{"participant.caller.aor": "sip:alice@example.com", "participant.caller.name": "Alice Caller",
		"participant.agent.aor": "sip:bob@example.com", "participant.agent.name": "Bob", "siprec": "true",
		"siprec.session_id": "hVpd7YQgRW2nD22h7q60JQ=="} {
		if sd.Meta[k] != want {
			t.Errorf("meta %s = %q, want %q", k, sd.Meta[k], want)
		}
	}
	key := callKeys()[0]
	caller := rec.snapshot(key + "/0")
	if caller.name != "caller" || len(caller.seqs) < aliceFrames || !bytes.Equal(caller.payload[:aliceFrames*160], bytes.Repeat(payload, aliceFrames)) {
		t.Errorf("caller leg %q: %d frames; want alice's %d frames of 0x55 first", caller.name, len(caller.seqs), aliceFrames)
	}
	var want []byte
	for _, p := range pcapRTP(t, "/usr/share/sip-tester/g711a.pcap") {
		want = append(want, p...)
	}
	agent := rec.snapshot(key + "/1")
	if agent.name != "agent" {
		t.Errorf("leg 1 is %q, want agent", agent.name)
	}
	checkPcapLeg(t, key+"/1", agent, want)

	eventually(t, 5*time.Second, "a metadata event", func() bool { return len(e.events.of("metadata")) == 1 })
	var md struct {
		Participants []participant `json:"participants"`
	}
	_ = json.Unmarshal(e.events.of("metadata")[0].Data, &md)
	found := false
	for _, p := range md.Participants {
		found = found || (p.Name == "Bob Agent" && p.Leg == "agent")
	}
	if !found {
		t.Errorf("metadata update %+v lacks Bob Agent on the agent leg", md.Participants)
	}
}
