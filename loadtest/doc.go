// Package loadtest replays recorded calls (WAV files, RTP captures) into callrouter at N
// concurrent calls and accounts for every frame: it places calls through a real ingest node (or,
// as a baseline, publishes the same message rate and sizes from plain NATS publishers to plain
// subscribers), records capture→worker latency in HDR histograms and per-leg
// sent/received/lost/duplicated/reordered counts with gap causes, samples the CPU and memory of
// the processes it watches, and writes terminal, JSON and HTML reports with pass/fail thresholds.
//
// The worker side is package probe's "loadtest" processor: in-process workers write into the
// run's Collector; remote workers that run it publish a "loadtest" event per call, and remote
// workers that do not are still counted from their "accounting" events.
package loadtest
