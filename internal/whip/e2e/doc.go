// Package e2e holds the end-to-end test of the WHIP ingest path with a real browser: headless
// Chromium, driven by playwright-core (call.mjs), opens the call page, places a call with its fake
// microphone playing a recording, and must see the worker's events on the page. The page is
// served over HTTPS (and, to prove the browser refuses it the microphone, over plain HTTP) and
// must keep its bearer token out of every URL. The browser and
// the one-process callrouter it calls run inside a private network namespace (unshare -n) whose
// only interface is loopback. TestCallPageTimeline (callpage.mjs) watches a two-leg file call on
// the page and checks what it draws: speech segments, overtalk, the DTMF marker, moving level
// meters and the end-of-call accounting.
package e2e
