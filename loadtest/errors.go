package loadtest

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrEnded means the system under test ended the call before the tester did (a BYE, a
	// closed peer connection, an ingest that gave up on the call).
	ErrEnded = errors.New("loadtest: call ended by the system under test")
	// ErrLeg means the leg index is out of range for the call.
	ErrLeg = errors.New("loadtest: no such leg")
)

// RefusedError is a call setup the system under test declined for now (SIP 503/486/480, HTTP
// 503/429, no capacity): the caller waits RetryAfter before it tries again.
type RefusedError struct {
	Code       string
	Reason     string
	RetryAfter time.Duration
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("loadtest: refused: %s: %s", e.Code, e.Reason)
}

// retryAfter returns how long a refused caller waits, and whether err is a refusal.
func retryAfter(err error) (time.Duration, bool) {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.RetryAfter, true
	}
	return 0, false
}
