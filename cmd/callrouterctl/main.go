// Command callrouterctl is the operator's client for a running callrouter cluster: calls, one
// call's story, workers, ingests, drains, the event stream, a live top view and an end-to-end
// check. It connects to NATS like the other binaries (-nats, -nats-creds, TLS flags, each also
// CALLROUTER_<FLAG>). Run "callrouterctl help" for the commands; internal/ctl implements them.
package main

import (
	"os"

	"github.com/callrouter/callrouter/internal/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
