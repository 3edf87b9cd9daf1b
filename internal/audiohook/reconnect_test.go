package audiohook

import (
	"bytes"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// openAs sends open for conversation conv, continuing the sessions named (id, serverseq,
// clientseq), and returns the answer.
func (c *client) openAs(conv string, pos time.Duration, continued ...map[string]any) serverMsgIn {
	c.t.Helper()
	params := map[string]any{"organizationId": c.org, "conversationId": conv,
		"participant": map[string]any{"id": newUUID(), "ani": "+1-555-555-1234", "aniName": "John Doe", "dnis": "+1-800-555-6789"},
		"media":       []map[string]any{stereoPCMU}}
	if len(continued) > 0 {
		params["continuedSessions"] = continued
	}
	c.sendMsg("open", params, pos)
	return c.recv()
}

// TestReconnectContinuesTheCall: a client that reconnects opens a session naming the one it
// continues (continuedSessions), then closes the old one with reason reconnect. The new session
// takes the call over on the call's timeline: one call, its frames contiguous across both
// sessions, not ended by the old session's close; the new session's close ends it.
func TestReconnectContinuesTheCall(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	c1, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	conv := newUUID()
	if m := c1.openAs(conv, 0); m.Type != "opened" {
		t.Fatalf("got %s, want opened", m.Type)
	}
	ext, in := tone(16000, 0.3, 700), tone(16000, 0.3, 300)
	send := func(c *client, from, to int) {
		for i := from; i < to; i += 1600 { // 200 ms, as Genesys sends
			c.audio(interleave(ext[i:i+1600], in[i:i+1600]))
		}
	}
	send(c1, 0, 8000) // 1 s on the first session
	c1.sync(time.Second)
	call := callFor(c1.id)
	eventually(t, 10*time.Second, "the first session's frames at the worker", func() bool { return len(processed.frames(call)) >= 2*50 })

	c2, err := e.dial(t, signOpts{org: c1.org})
	if err != nil {
		t.Fatal(err)
	}
	if m := c2.openAs(conv, 0, map[string]any{"id": c1.id, "serverseq": c1.server, "clientseq": c1.seq}); m.Type != "opened" {
		t.Fatalf("continuing session: got %s %s, want opened", m.Type, m.Parameters)
	}
	// The old session closes as the protocol asks; audio it still sends is not the call's.
	c1.audio(interleave(tone(1600, 0.3, 1000), tone(1600, 0.3, 1000)))
	c1.sendMsg("close", map[string]any{"reason": "reconnect"}, time.Second)
	c1.expect("closed", c1.seq)
	_ = c1.conn.Close(websocket.StatusNormalClosure, "")
	send(c2, 8000, 16000) // 1 s more on the new session
	c2.sync(time.Second)
	if r, ok := processed.stopped(call); ok {
		t.Fatalf("the call stopped (%s) when the session it moved from closed", r)
	}
	if fs := processed.frames(callFor(c2.id)); len(fs) > 0 {
		t.Fatalf("the continuing session placed a call of its own (%d frames)", len(fs))
	}
	c2.closeSession(time.Second)
	eventually(t, 10*time.Second, "the worker to stop the call", func() bool { _, ok := processed.stopped(call); return ok })
	if r, _ := processed.stopped(call); r != "end" {
		t.Errorf("the call stopped with %q, want end (the continuing session's close)", r)
	}
	var legs [2][]gotFrame
	for _, f := range processed.frames(call) {
		if !f.h.Has(frame.FlagLast) {
			legs[f.h.Leg] = append(legs[f.h.Leg], f)
		}
	}
	for leg, src := range [][]byte{ext, in} {
		fs := legs[leg]
		if len(fs) != 100 {
			t.Fatalf("leg %d: %d frames, want 100 (2 s over two sessions)", leg, len(fs))
		}
		for i, f := range fs {
			if f.h.Seq != uint32(i) || f.h.Has(frame.FlagGapFilled) || !bytes.Equal(f.payload, src[i*160:][:160]) {
				t.Fatalf("leg %d frame %d: seq %d gap-filled %v or audio differs", leg, i, f.h.Seq, f.h.Has(frame.FlagGapFilled))
			}
		}
	}
	eventually(t, 10*time.Second, "the first session to end as reconnected", func() bool {
		return testutil.ToFloat64(e.srv.m.ended.WithLabelValues(reasonReconnected)) == 1
	})
	if got := testutil.ToFloat64(e.srv.m.ended.WithLabelValues(reasonEnd)); got != 1 {
		t.Errorf("sessions ended %s: %v, want 1 (the continuing one)", reasonEnd, got)
	}
}

// TestReconnectOnlyTheClientsOwnSession: continuedSessions naming a session of another
// organization or conversation takes nothing over: the new session places its own call and the
// other goes on untouched.
func TestReconnectOnlyTheClientsOwnSession(t *testing.T) {
	e := startEnv(t, testConfig(t), envOpts{workers: 1})
	victim, err := e.dial(t, signOpts{})
	if err != nil {
		t.Fatal(err)
	}
	conv := newUUID()
	if m := victim.openAs(conv, 0); m.Type != "opened" {
		t.Fatalf("got %s, want opened", m.Type)
	}
	for _, tc := range []struct {
		name string
		org  string
		conv string
	}{{"another organization", newUUID(), conv}, {"another conversation", victim.org, newUUID()}} {
		c, err := e.dial(t, signOpts{org: tc.org})
		if err != nil {
			t.Fatal(err)
		}
		if m := c.openAs(tc.conv, 0, map[string]any{"id": victim.id, "serverseq": 1, "clientseq": 1}); m.Type != "opened" {
			t.Fatalf("%s: got %s, want opened (a call of its own)", tc.name, m.Type)
		}
		c.audio(make([]byte, 3200))
		c.sync(200 * time.Millisecond)
		eventually(t, 10*time.Second, tc.name+": its own call at the worker", func() bool { return len(processed.frames(callFor(c.id))) > 0 })
		c.closeSession(200 * time.Millisecond)
	}
	victim.audio(make([]byte, 3200))
	victim.sync(200 * time.Millisecond)
	eventually(t, 10*time.Second, "the first session's call still fed", func() bool { return len(processed.frames(callFor(victim.id))) > 0 })
	if r, ok := processed.stopped(callFor(victim.id)); ok {
		t.Fatalf("the first session's call stopped (%s)", r)
	}
	victim.closeSession(200 * time.Millisecond)
}
