// Package loadtest replays recorded calls (WAV files, RTP captures) into callrouter at N
// concurrent calls and accounts for every frame: it plays them as a SIP user agent client, a WHIP
// client or (the baseline) plain NATS publishers to plain subscribers, records capture→worker
// latency in HDR histograms and per-leg sent/received/lost/duplicated/reordered counts with gap
// causes, samples the CPU and memory of the processes it watches, and writes terminal, JSON and
// HTML reports with pass/fail thresholds.
//
// It is a black-box client: it imports callrouter's wire contract (frame, subjects, wire,
// session) and recording readers, never a service. The white-box parts — a one-process callrouter,
// and the inproc mode's ingest node in the tester's own process — come from a Harness (package
// inproc), which cmd/loadtest passes in Deps. The worker side is package probe's "loadtest"
// processor: in-process workers write into the run's Collector; remote workers that run it
// publish a "loadtest" event per call, and remote workers that do not are still counted from
// their "accounting" events.
package loadtest
