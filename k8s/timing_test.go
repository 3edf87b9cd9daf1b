package k8s

import (
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
)

// margin is what a process needs after its drain to exit: the last NATS flush (2 s in
// internal/cli) and the HTTP server's shutdown, with room to spare.
const margin = 10 * time.Second

// grace returns a pod template's termination grace period (the API default is 30 s).
func grace(w workload) time.Duration {
	if g := w.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// flagDuration reads a duration flag as the binary resolved it (manifest value or its default).
func flagDuration(t *testing.T, c component, name string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(c.Checked.Flags[name])
	if err != nil {
		t.Fatalf("%s: flag -%s %q: %v", c.W.Name, name, c.Checked.Flags[name], err)
	}
	return d
}

// atoi reads an integer flag as the binary resolved it.
func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("integer flag %q: %v", s, err)
	}
	return n
}

// The grace periods, drains, heartbeats and lame duck agree, across components. Values come from
// the binaries' -check-config (so a flag the manifests leave out counts at its default) and from
// the built manifests and nats.conf.
func TestTimingsAgree(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		byKind := map[string][]component{}
		for _, c := range components(t, b) {
			byKind[c.Checked.Component] = append(byKind[c.Checked.Component], c)
		}
		for _, w := range byKind["worker"] {
			drain := flagDuration(t, w, "drain-timeout")
			if g := grace(w.W); g < drain+margin {
				t.Errorf("worker %s: terminationGracePeriodSeconds %v < -drain-timeout %v + %v: the kubelet kills it mid-migration", w.W.Name, g, drain, margin)
			}
			for _, in := range byKind["ingest"] {
				// A drain migrates each call by asking ingest to place it again.
				if pt := flagDuration(t, in, "place-timeout"); drain <= pt {
					t.Errorf("worker -drain-timeout %v <= ingest -place-timeout %v: one migration may not fit in a drain", drain, pt)
				}
			}
			fence, hb := flagDuration(t, w, "fence-after"), flagDuration(t, w, "heartbeat")
			for _, r := range byKind["router"] {
				// A router declares a worker down after -misses of the worker's own heartbeat
				// interval; a stalled worker must have fenced itself by then, or two workers hold
				// a call.
				n := atoi(t, r.Checked.Flags["misses"])
				if detect := time.Duration(n) * hb; fence > detect {
					t.Errorf("worker -fence-after %v > router -misses %d × worker -heartbeat %v = %v", fence, n, hb, detect)
				}
				for _, in := range byKind["ingest"] {
					if og, ihb := flagDuration(t, r, "orphan-grace"), flagDuration(t, in, "heartbeat"); og <= ihb {
						t.Errorf("router -orphan-grace %v <= ingest -heartbeat %v: calls are reaped between two heartbeats", og, ihb)
					}
					// Ingest waits -place-timeout for the router, which tries -offer-attempts
					// workers for -offer-timeout each.
					if pt, ot := flagDuration(t, in, "place-timeout"), flagDuration(t, r, "offer-timeout"); pt <= ot*time.Duration(atoi(t, r.Checked.Flags["offer-attempts"])) {
						t.Errorf("ingest -place-timeout %v <= router -offer-timeout %v × -offer-attempts %s", pt, ot, r.Checked.Flags["offer-attempts"])
					}
				}
			}
			// The autoscaler removes one worker per period; each drain ends inside the period.
			for _, o := range b.objects {
				if h, ok := o.Obj.(*autoscalingv2.HorizontalPodAutoscaler); ok && h.Spec.ScaleTargetRef.Name == w.W.Name {
					sd := h.Spec.Behavior
					if sd == nil || sd.ScaleDown == nil || len(sd.ScaleDown.Policies) == 0 {
						t.Errorf("HorizontalPodAutoscaler %s: no scale-down policy (the default removes many workers at once)", o.Name)
						continue
					}
					for _, p := range sd.ScaleDown.Policies {
						if p.Type != autoscalingv2.PodsScalingPolicy || p.Value != 1 || time.Duration(p.PeriodSeconds)*time.Second < grace(w.W) {
							t.Errorf("HorizontalPodAutoscaler %s scale-down policy %+v: want 1 pod per period of at least the grace period %v", o.Name, p, grace(w.W))
						}
					}
				}
			}
		}
		for _, in := range byKind["ingest"] {
			drain := flagDuration(t, in, "drain-timeout")
			if in.Checked.Flags["sip-listen"] != "" {
				if sd := flagDuration(t, in, "sip-drain-timeout"); sd > drain {
					t.Errorf("ingest %s: -sip-drain-timeout %v > -drain-timeout %v: the node ends SIP calls before SIP hangs them up", in.W.Name, sd, drain)
				}
			}
			if g := grace(in.W); g < drain+margin {
				t.Errorf("ingest %s: terminationGracePeriodSeconds %v < -drain-timeout %v + %v", in.W.Name, g, drain, margin)
			}
		}
		for _, r := range byKind["router"] {
			if g := grace(r.W); g < margin {
				t.Errorf("router %s: terminationGracePeriodSeconds %v < %v", r.W.Name, g, margin)
			}
		}
		n := natsServer(t, b)
		ldm := n.Opts.LameDuckGracePeriod + n.Opts.LameDuckDuration
		if g := grace(n.W); g < ldm+margin {
			t.Errorf("nats: terminationGracePeriodSeconds %v < lame_duck_grace_period + lame_duck_duration %v + %v: clients are cut off, not moved", g, ldm, margin)
		}
	})
}

// Rolling updates and voluntary disruptions keep capacity: a worker's replacement is ready before
// it drains, and ingest (on fixed host ports) is replaced in place one at a time.
func TestRolloutsKeepCapacity(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		for _, w := range b.workloads() {
			d, ok := b.get("Deployment", w.Namespace, w.Name).(*appsv1.Deployment)
			if !ok {
				continue
			}
			ru := d.Spec.Strategy.RollingUpdate
			if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil || ru.MaxSurge == nil || ru.MaxUnavailable == nil {
				t.Errorf("Deployment %s: want an explicit RollingUpdate strategy", d.Name)
				continue
			}
			surge, unavail := ru.MaxSurge.String(), ru.MaxUnavailable.String()
			switch hostNet := w.Template.Spec.HostNetwork; {
			case hostNet && (surge != "0" || unavail != "1"):
				t.Errorf("Deployment %s uses host ports: maxSurge %s maxUnavailable %s, want 0 and 1", d.Name, surge, unavail)
			case !hostNet && (surge != "1" || unavail != "0"):
				t.Errorf("Deployment %s: maxSurge %s maxUnavailable %s, want 1 and 0 (the new pod is ready before an old one drains)", d.Name, surge, unavail)
			}
		}
	})
}
