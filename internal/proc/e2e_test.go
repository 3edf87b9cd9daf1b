package proc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/audio"
	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/filesrc"
	"github.com/callrouter/callrouter/internal/player"
	"github.com/callrouter/callrouter/internal/proc"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/internal/wav"
	"github.com/callrouter/callrouter/internal/wire"
	"github.com/callrouter/callrouter/internal/worker"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// TestEndToEnd plays a two-leg G.711 call through a one-process callrouter (embedded NATS,
// router, ingest, a worker running every processor) and checks the events that arrive on
// events.acme.<call>.> and the recording on disk.
func TestEndToEnd(t *testing.T) {
	speech, err := wav.ReadFile("testdata/speech.wav")
	if err != nil {
		t.Fatal(err)
	}
	digits, err := wav.ReadFile("testdata/dtmf-normal.wav")
	if err != nil {
		t.Fatal(err)
	}
	// Leg 0 (caller) speaks, leg 1 (agent) keys digits; both μ-law at 8 kHz.
	n := speech.Samples()
	caller := make([]byte, n)
	for i := range n {
		caller[i] = audio.EncodeMuLaw(int16(uint16(speech.Channels[0][2*i]) | uint16(speech.Channels[0][2*i+1])<<8))
	}
	agent := bytes.Repeat([]byte{0xFF}, n)
	copy(agent, digits.Channels[0])
	rec, err := filesrc.FromAudio(&wav.Audio{Format: wav.FormatMuLaw, Rate: 8000, BitsPerSample: 8, Channels: [][]byte{caller, agent}}, 0)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	wc := worker.DefaultConfig()
	wc.Processors = []string{"accounting", "speech", "dtmf", "levels", "record", "summary"}
	wc.ProcessorOptions = map[string]proc.Options{"record": {"dir": dir}}
	s, err := stack.Start(stack.Config{Workers: 1, Worker: wc, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	evs, err := bus.CollectEvents(nc, subjects.EventsCall("acme", "e2e-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Routers[0].Workers()) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no worker visible to the router")
		}
		time.Sleep(20 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := player.Play(ctx, s.Ingest, rec, rec.Spec("acme", "e2e-1", nil), 0, 2); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for len(evs.Of("summary")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no summary event; got %v", kinds(byKind(evs.All())))
		}
		time.Sleep(20 * time.Millisecond)
	}
	events := byKind(evs.All())

	var sum proc.Summary
	if err := json.Unmarshal(events["summary"][0].Data, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Reason != proc.StopEnd || sum.Legs[0].Lost != 0 || sum.Legs[1].Lost != 0 || sum.Legs[0].Frames != rec.Len() {
		t.Fatalf("summary legs %+v reason %s", sum.Legs, sum.Reason)
	}
	if sum.DTMF.Legs[1].Digits != "1234567890*#ABCD" || sum.DTMF.Legs[0].Digits != "" {
		t.Errorf("digits %+v", sum.DTMF.Legs)
	}
	var dtmf []string
	for _, ev := range events["dtmf"] {
		var d proc.DTMFEvent
		_ = json.Unmarshal(ev.Data, &d)
		dtmf = append(dtmf, d.Digit)
	}
	if len(dtmf) != 16 {
		t.Errorf("%d dtmf events: %v", len(dtmf), dtmf)
	}
	var starts []int64
	for _, ev := range events["speech"] {
		var sp proc.SpeechEvent
		_ = json.Unmarshal(ev.Data, &sp)
		if sp.Leg == 0 && sp.State == "start" {
			starts = append(starts, sp.MS)
		}
	}
	truth := []int64{400, 3342, 6119} // testdata/speech.json, in ms
	if len(starts) != len(truth) {
		t.Fatalf("caller speech starts %v, truth %v", starts, truth)
	}
	for i := range truth {
		if d := starts[i] - truth[i]; d < -40 || d > 40 {
			t.Errorf("segment %d starts at %d ms, truth %d", i, starts[i], truth[i])
		}
	}
	if sum.Recording == nil || sum.Recording.Path == "" {
		t.Fatalf("no recording in the summary")
	}
	got, err := wav.ReadFile(sum.Recording.Path)
	if err != nil {
		t.Fatal(err)
	}
	for leg := range 2 {
		if want := bytes.Join(rec.Frames[leg], nil); !bytes.Equal(got.Channels[leg], want) {
			t.Errorf("recorded leg %d differs from what was played", leg)
		}
	}
	for _, k := range []string{"levels", "speech_summary", "recording", "accounting"} {
		if len(events[k]) != 1 {
			t.Errorf("%d %q events", len(events[k]), k)
		}
	}
	_ = os.Remove(sum.Recording.Path)
}

func kinds(m map[string][]wire.Event) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

// byKind groups events by kind.
func byKind(evs []wire.Event) map[string][]wire.Event {
	out := map[string][]wire.Event{}
	for _, ev := range evs {
		out[ev.Kind] = append(out[ev.Kind], ev)
	}
	return out
}
