// Package loadtest replays recorded calls (WAV files, RTP captures) into callrouter at N
// concurrent calls and accounts for every frame: it places calls through a real ingest node (or,
// as a baseline, publishes the same message rate and sizes from plain NATS publishers to plain
// subscribers), records capture→worker latency in HDR histograms and per-leg
// sent/received/lost/duplicated/reordered counts with gap causes, samples the CPU and memory of
// the processes it watches, and writes terminal, JSON and HTML reports with pass/fail thresholds.
//
// The worker side is the "loadtest" processor registered here: a worker pool that runs it
// records into the Run's collector when the stack is in-process, and publishes a "loadtest"
// event with its counts and histogram when it is not.
package loadtest
