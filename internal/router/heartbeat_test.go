package router

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/callrouter/callrouter/internal/session"
	"github.com/callrouter/callrouter/internal/wire"
)

func workerHB(calls int) wire.WorkerHeartbeat {
	hb := wire.WorkerHeartbeat{V: 1, ID: "w1", Pool: "default", Mode: "session", Capacity: 600, Active: calls, LagMS: 2.5,
		Lagging: true, Ready: true, IntervalMS: 500}
	for i := range calls {
		hb.Calls = append(hb.Calls, wire.WorkerCall{Tenant: "acme", Call: fmt.Sprintf("call-%04d", i), Epoch: 1, Pool: "default",
			Ingest: "in-1", Progress: []session.LegSeq{{Leg: 0, Next: 100}, {Leg: 1, Next: int64(i)}}})
	}
	return hb
}

func TestDecodeSummaryStopsAtTheCallList(t *testing.T) {
	want := workerHB(3)
	data, _ := json.Marshal(want)
	var got wire.WorkerHeartbeat
	if err := decodeSummary(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Calls != nil {
		t.Errorf("summary decoded %d calls", len(got.Calls))
	}
	want.Calls = nil
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("summary %+v, want %+v", got, want)
	}
	// What follows "calls" is not read: a list cut short still gives the summary, and the
	// error shows when the list is asked for.
	cut := data[:len(data)-40]
	if err := decodeSummary(cut, &got); err != nil || got.ID != "w1" {
		t.Errorf("summary of a heartbeat with a broken list: %v, %+v", err, got)
	}
	l := newLazyCalls[wire.WorkerCall](cut)
	if calls, ok := l.get(); ok || calls != nil {
		t.Errorf("broken list decoded: %v %v", ok, calls)
	}
}

func TestDecodeSummaryAnyMemberOrder(t *testing.T) {
	// Another producer may write "calls" first and fields in any order, with spacing.
	data := []byte(`{ "calls": [{"tenant":"acme","call":"c","epoch":2,"pool":"p","ingest":"i","progress":[{"leg":0,"next":7}],"lag_ms":0}],
		"interval_ms": 250, "id": "w9", "v": 1, "pool": "p", "mode": "session", "capacity": 4, "active": 1,
		"lag_ms": 0, "lagging": false, "ready": true, "draining": false, "extra": {"x": [1, 2]} }`)
	var got wire.WorkerHeartbeat
	if err := decodeSummary(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "w9" || got.IntervalMS != 250 || got.Capacity != 4 || !got.Ready || got.Pool != "p" {
		t.Errorf("summary %+v", got)
	}
	l := newLazyCalls[wire.WorkerCall](data)
	calls, ok := l.get()
	if !ok || len(calls) != 1 || calls[0].Epoch != 2 || calls[0].Progress[0].Next != 7 {
		t.Errorf("calls %v %+v", ok, calls)
	}
	// A summary field missing altogether: the whole object is read, and what is there decodes.
	var in wire.IngestHeartbeat
	if err := decodeSummary([]byte(`{"v":1,"id":"in-1","calls":[],"interval_ms":500}`), &in); err != nil || in.ID != "in-1" || in.IntervalMS != 500 {
		t.Errorf("ingest summary %v %+v", err, in)
	}
}

func TestDecodeSummaryRejectsNonObjects(t *testing.T) {
	for _, bad := range []string{``, `[]`, `"hb"`, `{"v":1,"id":`, `{"v":"one","id":"w1","calls":[]}`} {
		var hb wire.WorkerHeartbeat
		if err := decodeSummary([]byte(bad), &hb); err == nil {
			t.Errorf("decodeSummary(%q) accepted", bad)
		}
	}
}

// BenchmarkHeartbeat500Calls compares reading a 500-call worker heartbeat whole (what the router
// did for every heartbeat) with reading its summary (what it does now; the list is decoded only
// when asked for).
func BenchmarkHeartbeat500Calls(b *testing.B) {
	data, _ := json.Marshal(workerHB(500))
	b.Run("whole", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			var hb wire.WorkerHeartbeat
			if err := json.Unmarshal(data, &hb); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("summary", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			var hb wire.WorkerHeartbeat
			if err := decodeSummary(data, &hb); err != nil {
				b.Fatal(err)
			}
		}
	})
}
