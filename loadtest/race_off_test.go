//go:build !race

package loadtest

const raceOn = false
