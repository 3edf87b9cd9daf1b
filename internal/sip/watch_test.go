package sip

import (
	"testing"
	"time"
)

// TestCallExpiry: the server's one checker ends a call for RTP inactivity, session expiry or
// the maximum duration, and never a call whose streams have not started reading yet (the
// checker can look at a call between its registration and its streams' start; with the check
// counting from the streams' clocks alone such a call timed out at once).
func TestCallExpiry(t *testing.T) {
	start := time.Now()
	s := &Server{cfg: Config{RTPTimeout: 30 * time.Second, MaxCallDuration: time.Hour}}
	c := &callState{s: s, start: start, streams: []*stream{{}, {}}}
	if r := c.expiry(start.Add(time.Millisecond)); r != "" {
		t.Fatalf("a call whose streams have not started ended: %s", r)
	}
	c.streams[1].lastRTP.Store(start.Add(10 * time.Second).UnixNano())
	if r := c.expiry(start.Add(39 * time.Second)); r != "" {
		t.Fatalf("29 s after the last packet: %s", r)
	}
	if r := c.expiry(start.Add(41 * time.Second)); r != "rtp_timeout" {
		t.Fatalf("31 s after the last packet: %q, want rtp_timeout", r)
	}
	c.streams[0].lastRTP.Store(start.Add(2 * time.Hour).UnixNano())
	if r := c.expiry(start.Add(time.Hour + time.Second)); r != "max_duration" {
		t.Fatalf("after MaxCallDuration: %q", r)
	}
	s.cfg.MaxCallDuration = 0
	c.expires, c.refreshed = 90*time.Second, start.Add(time.Hour)
	if r := c.expiry(start.Add(time.Hour + 80*time.Second)); r != "" {
		t.Fatalf("within the session interval: %q", r)
	}
	if r := c.expiry(start.Add(time.Hour + 91*time.Second)); r != "session_expired" {
		t.Fatalf("past the session interval: %q", r)
	}
}
