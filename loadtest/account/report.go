package account

import hdr "github.com/HdrHistogram/hdrhistogram-go"

// CallReport is the body of a "loadtest" event: one call's worker-side account.
type CallReport struct {
	Stop string        `json:"stop"`
	Legs []LegReport   `json:"legs"`
	Hist *hdr.Snapshot `json:"latency_us"`
}

// LegReport is one leg of a CallReport.
type LegReport struct {
	Received   int64            `json:"received"`
	Lost       int64            `json:"lost"`
	Duplicated int64            `json:"duplicated"`
	Reordered  int64            `json:"reordered"`
	Replayed   int64            `json:"replayed"`
	GapFilled  int64            `json:"gap_filled"`
	Paused     int64            `json:"paused,omitempty"`
	LostBy     map[string]int64 `json:"lost_by_cause,omitempty"`
}

// NewCallReport builds the event body.
func NewCallReport(stop string, legs []Leg, h *hdr.Histogram) CallReport {
	cr := CallReport{Stop: stop}
	if h != nil {
		cr.Hist = h.Export()
	}
	for _, l := range legs {
		cr.Legs = append(cr.Legs, LegReport{Received: l.Received, Lost: l.Lost, Duplicated: l.Duplicated, Reordered: l.Reordered,
			Replayed: l.Replayed, GapFilled: l.GapFilled, Paused: l.Paused, LostBy: l.LostBy})
	}
	return cr
}

// Accounts turns a received report back into leg accounts.
func (cr *CallReport) Accounts() []Leg {
	out := make([]Leg, len(cr.Legs))
	for i, l := range cr.Legs {
		out[i] = Leg{Received: l.Received, Lost: l.Lost, Duplicated: l.Duplicated, Reordered: l.Reordered, Replayed: l.Replayed,
			GapFilled: l.GapFilled, Paused: l.Paused, LostBy: l.LostBy, next: -1}
	}
	return out
}

// Accounting is the body of a worker's "accounting" event, as far as the tester reads it.
type Accounting struct {
	Reason string       `json:"reason"`
	Legs   []LegAccount `json:"legs"`
}

// LegAccount is one leg of an Accounting.
type LegAccount struct {
	Leg        uint8          `json:"leg"`
	Processed  int            `json:"processed"`
	GapFilled  int            `json:"gap_filled"`
	Replayed   int            `json:"replayed"`
	Duplicates int            `json:"duplicates"`
	Paused     int            `json:"paused"` // withheld by ingest during a pause: accounted, not lost
	Lost       int            `json:"lost"`
	LostBy     map[string]int `json:"lost_by_cause,omitempty"`
}

// FromAccounting turns a worker's "accounting" event into leg accounts, for pools that do not
// run the probe.
func FromAccounting(a Accounting) []Leg {
	out := []Leg{}
	for _, la := range a.Legs {
		for int(la.Leg) > len(out) {
			out = append(out, NewLeg())
		}
		l := NewLeg()
		l.Received, l.Duplicated, l.Lost, l.Replayed = int64(la.Processed), int64(la.Duplicates), int64(la.Lost), int64(la.Replayed)
		l.GapFilled, l.Paused = int64(la.GapFilled), int64(la.Paused)
		for k, v := range la.LostBy {
			if l.LostBy == nil {
				l.LostBy = map[string]int64{}
			}
			l.LostBy[k] += int64(v)
		}
		out = append(out, l)
	}
	return out
}
