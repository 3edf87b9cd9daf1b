package k8s

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// exceptionsAnnotation on a namespace that enforces less than restricted lists the restricted
// checks (by the library's ForbiddenReason) its pods are allowed to fail; they must pass the rest.
const exceptionsAnnotation = "callrouter.io/pod-security-exceptions"

// forbidden evaluates a pod template at a level and returns the reasons of the failed checks.
func forbidden(t *testing.T, lv psapi.LevelVersion, w workload) []string {
	t.Helper()
	ev, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range ev.EvaluatePod(lv, &w.Template.ObjectMeta, &w.Template.Spec) {
		if !r.Allowed {
			out = append(out, r.ForbiddenReason+" ("+r.ForbiddenDetail+")")
		}
	}
	return out
}

func TestPodsMeetTheirNamespacesPodSecurityLevel(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		for _, w := range b.workloads() {
			ns, _ := b.get("Namespace", "", w.Namespace).(*corev1.Namespace)
			if ns == nil {
				t.Errorf("%s %s/%s: namespace %q is not in the build", w.Kind, w.Namespace, w.Name, w.Namespace)
				continue
			}
			if _, ok := ns.Labels[psapi.EnforceLevelLabel]; !ok {
				t.Errorf("namespace %s claims no level (%s)", ns.Name, psapi.EnforceLevelLabel)
				continue
			}
			pol, errs := psapi.PolicyToEvaluate(ns.Labels, psapi.Policy{})
			if len(errs) > 0 {
				t.Errorf("namespace %s: %v", ns.Name, errs.ToAggregate())
				continue
			}
			if bad := forbidden(t, pol.Enforce, w); len(bad) > 0 {
				t.Errorf("%s %s/%s fails its namespace's %s: %v", w.Kind, w.Namespace, w.Name, pol.Enforce, bad)
			}
			// Below restricted, the pod still meets restricted in all but the listed checks.
			restricted := psapi.LevelVersion{Level: psapi.LevelRestricted, Version: pol.Enforce.Version}
			var allowed []string
			if v := ns.Annotations[exceptionsAnnotation]; v != "" {
				allowed = strings.Split(v, ",")
			}
			if pol.Enforce.Level == psapi.LevelRestricted && len(allowed) > 0 {
				t.Errorf("namespace %s enforces restricted but lists exceptions %v", ns.Name, allowed)
			}
			if pol.Enforce.Level != psapi.LevelRestricted && len(allowed) == 0 {
				t.Errorf("namespace %s enforces %s and does not say why (annotation %s)", ns.Name, pol.Enforce.Level, exceptionsAnnotation)
			}
			used := map[string]bool{}
			for _, f := range forbidden(t, restricted, w) {
				reason, _, _ := strings.Cut(f, " (")
				if !slices.Contains(allowed, reason) {
					t.Errorf("%s %s/%s fails restricted check %s, which namespace %s does not list as an exception", w.Kind, w.Namespace, w.Name, f, ns.Name)
				}
				used[reason] = true
			}
			for _, a := range allowed {
				if !used[a] {
					t.Errorf("namespace %s lists exception %q, which no check of %s %s needs", ns.Name, a, w.Kind, w.Name)
				}
			}
		}
	})
}

// The evaluator is not vacuous: a plain pod with no security context fails restricted.
func TestPodSecurityCheckCatchesAPlainPod(t *testing.T) {
	w := workload{Kind: "Pod", Template: &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}}
	lv := psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()}
	if bad := forbidden(t, lv, w); len(bad) < 3 {
		t.Errorf("a pod without a security context fails only %v at restricted", bad)
	}
}
