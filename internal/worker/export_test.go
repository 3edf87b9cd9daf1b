package worker

// StallHeartbeats makes the worker's heartbeat loop look stalled past the fence, as after a long
// pause of the process or a starved machine.
func StallHeartbeats(w *Worker) { w.lastTick.Store(w.mono() - 10*int64(w.cfg.FenceAfter)) }
