package wire

import (
	"encoding/json"
	"time"
)

// Admin API verbs for operators (router.api.<verb>) beyond calls, call and workers, and the
// worker's drain verb (worker.<id>.drain).
const (
	APIIngests      = "ingests"
	APIHistory      = "history"
	WorkerVerbDrain = "drain"
)

// IngestView is one ingest node in the admin API, from its heartbeats.
type IngestView struct {
	ID         string    `json:"id"`
	Active     int       `json:"active"` // calls it owns
	Draining   bool      `json:"draining"`
	Ready      bool      `json:"ready"` // heard within its heartbeat interval and not draining
	IntervalMS int       `json:"interval_ms"`
	LastSeen   time.Time `json:"last_seen"`
}

// IngestsReply answers router.api.ingests.
type IngestsReply struct {
	Reply
	Ingests []IngestView `json:"ingests"`
}

// HistoryEntry is one lifecycle event of a call as a router saw it on events.<t>.<c>.<kind>.
type HistoryEntry struct {
	Time   time.Time       `json:"time"`
	Kind   string          `json:"kind"`
	Epoch  uint32          `json:"epoch"`
	Source string          `json:"source"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// HistoryReply answers router.api.history (a CallQuery): the call's lifecycle events this
// router replica saw, oldest first, at most a bounded number (Dropped counts the ones left out).
type HistoryReply struct {
	Reply
	Events  []HistoryEntry `json:"events"`
	Dropped int            `json:"dropped,omitempty"`
	Ended   bool           `json:"ended"`
}

// DrainRequest asks a worker (worker.<id>.drain) to stop taking offers and migrate every call
// away, make-before-break, as on SIGTERM but without exiting. Resume undoes it: the worker takes
// offers again (calls already migrated stay where they went).
type DrainRequest struct {
	V      int  `json:"v"`
	Resume bool `json:"resume,omitempty"`
}

// DrainReply answers a DrainRequest.
type DrainReply struct {
	Reply
	Worker   string `json:"worker"`
	Draining bool   `json:"draining"`
	Calls    int    `json:"calls"` // calls held when the request arrived
}
