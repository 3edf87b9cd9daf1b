// Package k8s holds callrouter's Kubernetes deployment, a kustomize base (base/) with the dev and
// production overlays (overlays/), and the tests that prove it without a cluster: every overlay
// builds and decodes strictly into the Kubernetes API types; every pod meets the Pod Security
// Standard its namespace claims; every container's command, arguments and environment pass the
// real binary's -check-config, and its probes and ports are ones that binary serves; the NATS
// configuration passes the nats-server parser; the grace periods, drain timeouts, heartbeats and
// lame-duck settings agree; the NetworkPolicies let through what must pass and nothing else; the
// Dockerfile builds each component as a static non-root image. Apply it as docs/deploy.md says.
package k8s
