// Package e2e holds the end-to-end test of the WHIP ingest path with a real browser: headless
// Chromium, driven by playwright-core (call.mjs), opens the call page, places a call with its fake
// microphone playing a recording, and must see the worker's events on the page. The browser and
// the one-process callrouter it calls run inside a private network namespace (unshare -n) whose
// only interface is loopback.
package e2e
