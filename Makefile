# callrouter: `make help` lists the targets.
GO ?= go
PKGS ?= ./...
OVERLAY ?= dev

.PHONY: help run build test test-libopus bench vet fuzz loadtest loadtest-worker nats-keys nats-dev-tls rules fault hostile scale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

run: ## one-process callrouter: embedded NATS, router, workers, ingest, plays the sample call
	$(GO) run ./cmd/callrouter

build: ## build every binary into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/...

vet: ## go vet and gofmt
	$(GO) vet $(PKGS)
	$(GO) vet -tags loadtest ./cmd/worker ./cmd/callrouter
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)

test: vet ## the full test suite with the race detector, then every benchmark once
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	$(GO) test -run '^$$' -bench . -benchtime 1x -count=1 $(PKGS)

test-libopus: ## audio and processors with the optional cgo libopus decoder (needs Debian's libopus-dev and pkg-config)
	$(GO) vet -tags libopus ./internal/audio ./internal/proc
	$(GO) test -race -count=1 -tags libopus ./internal/audio ./internal/proc

bench: ## benchmarks with enough iterations to read figures
	$(GO) test -run '^$$' -bench . -benchmem -count 5 $(PKGS)

FUZZTIME ?= 30s

fuzz: ## run every fuzz target in the tree (found by name, none skipped) for FUZZTIME each (30s)
	@set -e; targets=$$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); \
	test -n "$$targets" || { echo "no fuzz targets found" >&2; exit 1; }; \
	n=0; for f in $$targets; do dir=$$(dirname $$f); \
	  for t in $$(grep -h '^func Fuzz' $$f | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "== $$dir $$t"; n=$$((n+1)); \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$dir; \
	  done; done; echo "fuzz: $$n targets ran"

loadtest: ## 1,000 two-leg calls vs raw NATS (per-call baseline and wildcard floor), 3 alternating rounds of 30 s; fails on any lost frame, any refusal, a p99 over 2x raw NATS or over 150 KB of RSS a call above raw NATS (a regression guard: issue 17's goal is 120, measured 122.7)
	$(GO) run ./cmd/loadtest -input internal/sample/call.wav -calls 1000 -ramp 250 -call-duration 60s \
		-run-time 30s -baseline -floor -rounds 3 -max-loss 0 -max-refused 0 -max-p99-ratio 2 -max-rss-per-call 150 \
		-json loadtest.json -html loadtest.html

loadtest-worker: ## a worker binary with the load tester's probe processor (remote load tests), into bin/
	CGO_ENABLED=0 $(GO) build -tags loadtest -trimpath -o bin/worker-loadtest ./cmd/worker

nats-keys: ## NATS seeds and the server's authorization block from k8s/identities.conf into k8s/overlays/$(OVERLAY)/secrets/nats (OVERLAY=dev)
	$(GO) run ./cmd/callrouter-auth keys -spec k8s/identities.conf -out k8s/overlays/$(OVERLAY)/secrets/nats

nats-dev-tls: ## an offline development CA with NATS server and client certificates for the dev overlay
	$(GO) run ./cmd/callrouter-auth tls -out k8s/overlays/dev/secrets/nats-tls -valid 87600h

rules: ## check the alert rules and run their unit tests with promtool
	promtool check rules k8s/monitoring/callrouter-rules.yml
	cd k8s/monitoring && promtool test rules callrouter-rules.test.yml

fault: ## the fault suite (NATS down at start, worker and ingest cut, blackholed, delayed, stopped; killed nodes): one FIGURES line per fault; CALLROUTER_FAULT_LONG=1 lengthens the faults
	@rc=0; $(GO) test -count=1 -timeout 20m -v -run 'Test(Kill|Drain|Paused|NATSUnavailableAtStart|WorkerConnection|IngestConnection|IngestStall|FaultProxy)' ./e2e > fault.log 2>&1 || rc=$$?; \
	grep -E '^(--- |ok|FAIL)|FIGURES' fault.log; echo "full output: fault.log"; exit $$rc

hostile: ## the hostile-input table (floods, torture messages, timestamp jumps, oversized requests) written to hostile.md; fails on any row that fails
	CALLROUTER_HOSTILE_REPORT=$(CURDIR)/hostile.md $(GO) test -count=1 -timeout 20m -run TestHostile -v ./hostile

scale: ## multi-process scale-out (one of each vs 3 NATS nodes, 2 routers, 2 SIP ingests, 4 workers; CALLROUTER_SCALE_CALLS, default 400; the steady load twice a topology, CALLROUTER_SCALE_PASSES): CPU per call by process, churn; fails on any lost frame or refused call; output in scale.log
	@rc=0; CALLROUTER_SCALE=1 CALLROUTER_SCALE_JSON=$(CURDIR)/scale.json $(GO) test -count=1 -timeout 40m -v -run TestScaleOut ./e2e > scale.log 2>&1 || rc=$$?; \
	grep -E '^(--- |ok|FAIL)|FIGURES|^ *\|' scale.log; echo "full output: scale.log"; exit $$rc

clean: ## remove build output
	rm -rf bin
