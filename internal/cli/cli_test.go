package cli

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestParseFillsFromEnvironment(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	d := fs.Duration("idle-timeout", time.Second, "")
	n := fs.Int("capacity", 1, "")
	var l List
	fs.Var(&l, "pools", "")
	t.Setenv("CALLROUTER_IDLE_TIMEOUT", "3s")
	t.Setenv("CALLROUTER_CAPACITY", "9")
	t.Setenv("CALLROUTER_POOLS", "a, b")
	if err := Parse(fs, []string{"-capacity", "5"}); err != nil {
		t.Fatal(err)
	}
	if *d != 3*time.Second || *n != 5 || l.String() != "a,b" {
		t.Errorf("got %v %v %v; the flag must win over the environment", *d, *n, l)
	}
}

func TestParseNamesTheBadVariable(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Duration("idle-timeout", time.Second, "")
	t.Setenv("CALLROUTER_IDLE_TIMEOUT", "soon")
	err := Parse(fs, nil)
	if err == nil || !strings.Contains(err.Error(), "CALLROUTER_IDLE_TIMEOUT") || !strings.Contains(err.Error(), "-idle-timeout") {
		t.Errorf("err %v, want one naming the variable and the flag", err)
	}
	if err := Parse(flag.NewFlagSet("y", flag.ContinueOnError), []string{"stray"}); err == nil {
		t.Error("a stray argument was accepted")
	}
}
