package sip

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeScenario(t testing.TB, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dtmfScenario builds a uac scenario that plays the DTMF pcaps of digits in turn.
func dtmfScenario(digits []string) string {
	b, err := os.ReadFile("testdata/sipp/dtmf.xml")
	if err != nil {
		panic(err)
	}
	var plays strings.Builder
	for _, d := range digits {
		plays.WriteString(`  <nop><action><exec play_pcap_audio="pcap/dtmf_2833_` + d + `.pcap"/></action></nop>
  <pause milliseconds="400"/>
`)
	}
	return strings.Replace(string(b), "<!-- DIGITS -->", plays.String(), 1)
}
