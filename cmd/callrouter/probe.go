//go:build loadtest

package main

// Built with -tags loadtest, the binary has the load tester's "loadtest" processor (package
// probe), so that cmd/loadtest can time a remote pool's frames; production builds leave it out.
import _ "github.com/callrouter/callrouter/loadtest/probe"
