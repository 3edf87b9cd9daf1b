# callrouter: `make help` lists the targets.
GO ?= go
PKGS ?= ./...

.PHONY: help run build test bench vet fuzz loadtest clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

run: ## one-process callrouter: embedded NATS, router, workers, ingest, plays the sample call
	$(GO) run ./cmd/callrouter

build: ## build every binary into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/...

vet: ## go vet and gofmt
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)

test: vet ## the full test suite with the race detector, then every benchmark once
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	$(GO) test -run '^$$' -bench . -benchtime 1x -count=1 $(PKGS)

bench: ## benchmarks with enough iterations to read figures
	$(GO) test -run '^$$' -bench . -benchmem -count 5 $(PKGS)

fuzz: ## run every fuzz target for 30 s
	$(GO) test -run '^$$' -fuzz FuzzUnmarshal -fuzztime 30s ./internal/frame
	$(GO) test -run '^$$' -fuzz FuzzAudioRoundTrip -fuzztime 30s ./internal/subjects
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./internal/wav
	$(GO) test -run '^$$' -fuzz FuzzCutter -fuzztime 30s ./internal/whip
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./internal/audio
	$(GO) test -run '^$$' -fuzz FuzzFrames -fuzztime 30s ./internal/proc
	$(GO) test -run '^$$' -fuzz FuzzTelephoneEvent -fuzztime 30s ./internal/frame
	$(GO) test -run '^$$' -fuzz FuzzSIPDatagram -fuzztime 30s ./internal/sip
	$(GO) test -run '^$$' -fuzz FuzzTCPFraming -fuzztime 30s ./internal/sip
	$(GO) test -run '^$$' -fuzz FuzzRTP -fuzztime 30s ./internal/sip
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./internal/sdp

loadtest: ## 1,000 two-leg calls vs raw NATS, 3 alternating rounds of 30 s; fails on any lost frame
	$(GO) run ./cmd/loadtest -input internal/sample/call.wav -calls 1000 -ramp 250 -call-duration 60s \
		-run-time 30s -baseline -rounds 3 -max-loss 0 -max-refused 0 -json loadtest.json -html loadtest.html

clean: ## remove build output
	rm -rf bin
