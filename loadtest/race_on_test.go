//go:build race

package loadtest

// raceOn: the race detector is on (it allocates where the plain build does not).
const raceOn = true
