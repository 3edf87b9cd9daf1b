package stack

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind once its services stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
