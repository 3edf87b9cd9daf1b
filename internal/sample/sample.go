// Package sample ships the recording the one-process mode plays: a short two-leg μ-law call (a
// caller and an agent taking turns, with silences), made with espeak-ng and sox.
package sample

import (
	_ "embed"

	"github.com/callrouter/callrouter/internal/wav"
)

//go:embed call.wav
var callWAV []byte

// Call returns the sample call, decoded.
func Call() (*wav.Audio, error) { return wav.Parse(callWAV) }
