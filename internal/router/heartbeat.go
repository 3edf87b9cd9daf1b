package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
)

// Worker and ingest heartbeats carry one entry per call the component holds: at 500 calls a
// worker heartbeat is about 90 KB of JSON and takes encoding/json 3 ms to decode, four times a
// second per worker, on a machine that is also moving audio. The router needs the summary fields
// (liveness, capacity, readiness) of every heartbeat but the call list only now and then (a
// death, a failover placement, the orphan sweep, the admin API). So it reads each heartbeat's
// fields up to "calls" and keeps the message; the list is decoded from the kept bytes the first
// time it is asked for, so what it sees is always the latest heartbeat's.

var errNotObject = errors.New("heartbeat is not a JSON object")

// summaryFields maps a heartbeat type to the JSON names of its fields other than "calls".
var summaryFields sync.Map // reflect.Type → map[string]bool

func fieldsOf(t reflect.Type) map[string]bool {
	if f, ok := summaryFields.Load(t); ok {
		return f.(map[string]bool)
	}
	names := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" && name != "calls" {
			names[name] = true
		}
	}
	summaryFields.Store(t, names)
	return names
}

// decodeSummary decodes the members of the heartbeat object data into v (a pointer to a
// heartbeat struct), stopping at the "calls" member once every other field of v has been seen.
// Our components write "calls" last, so the list is not read at all; a heartbeat from another
// producer that puts it earlier is read through and decoded all the same.
func decodeSummary(data []byte, v any) error {
	want := fieldsOf(reflect.TypeOf(v).Elem())
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errNotObject
	}
	var head bytes.Buffer
	head.WriteByte('{')
	seen := 0
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := t.(string)
		if key == "calls" && seen == len(want) {
			break
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		if key == "calls" || !want[key] {
			continue
		}
		seen++
		if head.Len() > 1 {
			head.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		head.Write(k)
		head.WriteByte(':')
		head.Write(val)
	}
	head.WriteByte('}')
	return json.Unmarshal(head.Bytes(), v)
}

// lazyCalls holds a heartbeat message and decodes its "calls" member on first use.
type lazyCalls[T any] struct {
	raw    []byte
	calls  []T
	parsed bool
	bad    bool // the list did not decode
}

// newLazyCalls keeps data without copying it: a nats.go message's Data is its own copy, taken
// out of the connection's read buffer.
func newLazyCalls[T any](data []byte) lazyCalls[T] {
	return lazyCalls[T]{raw: data}
}

// get returns the calls; ok is false when the list does not decode (it is then empty).
func (l *lazyCalls[T]) get() (calls []T, ok bool) {
	if !l.parsed {
		l.parsed = true
		var body struct {
			Calls []T `json:"calls"`
		}
		if err := json.Unmarshal(l.raw, &body); err != nil {
			l.raw, l.bad = nil, true
			return nil, false
		}
		l.calls, l.raw = body.Calls, nil
	}
	return l.calls, !l.bad
}
