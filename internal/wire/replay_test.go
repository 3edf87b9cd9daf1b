package wire

import "testing"

func TestReplayContinue(t *testing.T) {
	req := ReplayRequest{V: V, Tenant: "acme", Call: "c", Epoch: 3, Legs: []LegRange{{Leg: 0, From: -2}, {Leg: 1, From: 5, To: 90}, {Leg: 2, From: 7}}}
	next, err := req.Continue(ReplayNext(1, 40))
	if err != nil {
		t.Fatal(err)
	}
	if len(next.Legs) != 2 || next.Legs[0] != (LegRange{Leg: 1, From: 40, To: 90}) || next.Legs[1] != req.Legs[2] || next.Epoch != 3 {
		t.Errorf("continuation %+v", next)
	}
	if req.Legs[1].From != 5 {
		t.Error("Continue changed the original request")
	}
	for _, bad := range []string{"", "1", "x 4", "1 -4", "9 4", "1 90", "300 1"} {
		if _, err := req.Continue(bad); err == nil {
			t.Errorf("Continue(%q) accepted", bad)
		}
	}
}
