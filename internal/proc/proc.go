// Package proc defines the worker's processor interface: per-call handlers that receive a call's
// frames in order on the call's own goroutine and publish events, plus the registry that maps the
// processor names used in configuration to their factories. The "accounting" processor lives here
// because every pool runs it by default.
package proc

import (
	"fmt"
	"sort"
	"sync"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/rs/zerolog"
)

// Stop reasons passed to Handler.Stop.
const (
	StopEnd        = "end"        // ingest ended the call (last frame on every leg)
	StopIdle       = "idle"       // no frame for the idle timeout
	StopReleased   = "released"   // the router or ingest released the call
	StopSuperseded = "superseded" // a higher epoch was seen: another worker owns the call
	StopMigrated   = "migrated"   // handed to another worker by drain or rebalance
	StopShutdown   = "shutdown"   // the worker is exiting without handing off
)

// Gap causes.
const (
	CauseNetwork      = "network_loss"        // lost before ingest (RTP loss, gap-filled frames)
	CauseIngest       = "ingest_overload"     // ingest could not publish
	CauseBus          = "bus_loss"            // missing between NATS publish and the worker
	CauseSlowConsumer = "bus_slow_consumer"   // the NATS client dropped for this subscription
	CauseBackpressure = "worker_backpressure" // the worker's own queue dropped the oldest frames
	CauseStale        = "stale"               // dropped as older than the worker's max frame age
	CauseReplacement  = "replacement"         // lost across a re-placement, ring could not fill it
	CauseSilence      = "client_silence"      // the client sent nothing (silence suppression)
	CauseIngestStall  = "ingest_stall"        // ingest stalled or was cut off past its ring; lost on the way back
	CauseResync       = "resync"              // a forward sequence jump beyond the worker's ring: the stream was re-anchored
	// CausePaused is not a loss: frames missing between two paused frames (frame.FlagPaused)
	// carried no audio. Accounting counts them with the paused frames, never in lost.
	CausePaused = "paused"
)

// Call is what the worker runtime tells a handler about its call.
type Call interface {
	Spec() *session.Spec
	Epoch() uint32
	Worker() string
	Pool() string
	// Emit publishes an event of the given kind on events.<tenant>.<call>.<kind>. data is
	// marshalled to JSON. Emit does nothing once the call has been superseded.
	Emit(kind string, data any)
	Log() *zerolog.Logger
	// Shared is the state the call's processors share (decoded audio, summary sections); the
	// same value for every processor of the call.
	Shared() *Shared
}

// Reporter is implemented by the worker's Call. Report publishes an event like Emit, and also once
// the call has been superseded, when Emit publishes nothing: for a measurement of the share of the
// call this worker processed (the load tester's per-call report), which no other worker reports;
// never for an event about the call, which the worker that took it over publishes.
type Reporter interface {
	Report(kind string, data any)
}

// Frame is one frame delivered to a handler. Payload aliases a NATS message buffer and is valid
// only during the call to Handler.Frame.
type Frame struct {
	Header  frame.Header
	Payload []byte
	// Received is when the worker took the frame off the bus (unix nanos); for a replayed frame,
	// when the live frame that set off the replay was. It saves handlers a clock read per frame.
	Received int64
}

// Gap reports frames that will never arrive: sequence numbers From..To inclusive on a leg.
type Gap struct {
	Leg   uint8  `json:"leg"`
	From  uint32 `json:"from"`
	To    uint32 `json:"to"`
	Cause string `json:"cause"`
}

// Count returns the number of frames in the gap.
func (g Gap) Count() int { return int(g.To-g.From) + 1 }

// Handler processes one call. All methods run on the call's goroutine, in frame order.
type Handler interface {
	Frame(f *Frame)
	Stop(reason string)
}

// GapHandler is implemented by handlers that want gap reports.
type GapHandler interface {
	Gap(g Gap)
}

// DupHandler is implemented by handlers that want to hear of duplicate or late frames, which
// are never passed to Frame.
type DupHandler interface {
	Duplicate(h *frame.Header)
}

// PauseHandler is implemented by handlers that want to hear of paused frames (frame.FlagPaused:
// ingest withheld the audio during a secure pause), which are never passed to Frame. A handler
// without it sees a paused span as a forward jump in sequence numbers at the next frame.
type PauseHandler interface {
	Paused(h *frame.Header)
}

// Controller is implemented by handlers that answer commands sent on ctl.<tenant>.<call>.
// ok false means the handler does not know the command.
type Controller interface {
	Control(cmd string, args map[string]string) (result any, ok bool, err error)
}

// Processor starts handlers for calls.
type Processor interface {
	Start(c Call) (Handler, error)
}

// Options are processor settings from the worker's configuration ("name.key=value").
type Options map[string]string

// Factory builds a processor from its options.
type Factory func(opts Options) (Processor, error)

var (
	mu       sync.RWMutex
	registry = map[string]Factory{}
)

// Register makes a processor available by name. It panics on a duplicate name.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic("proc: duplicate processor " + name)
	}
	registry[name] = f
}

// Names returns the registered processor names, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Build returns the named processors in order.
func Build(names []string, opts map[string]Options) ([]Processor, error) {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]Processor, 0, len(names))
	for _, n := range names {
		f, ok := registry[n]
		if !ok {
			return nil, fmt.Errorf("proc: unknown processor %q (known: %v)", n, namesLocked())
		}
		p, err := f(opts[n])
		if err != nil {
			return nil, fmt.Errorf("proc: %s: %w", n, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func namesLocked() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
