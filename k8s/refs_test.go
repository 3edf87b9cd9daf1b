package k8s

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// selects reports whether a label selector matches a set of labels; a nil selector matches
// nothing, an empty one everything.
func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(labels.Set(l))
}

// selected returns the workloads of a namespace whose pods a selector matches.
func (b *built) selected(namespace string, sel *metav1.LabelSelector) []workload {
	var out []workload
	for _, w := range b.workloads() {
		if w.Namespace == namespace && selects(sel, w.Template.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// Everything that names something else names something the build holds.
func TestReferencesResolve(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		for _, o := range b.objects {
			if o.Kind != "Namespace" && b.get("Namespace", "", o.Namespace) == nil {
				t.Errorf("%s %s/%s: namespace %q is not in the build", o.Kind, o.Namespace, o.Name, o.Namespace)
			}
		}
		for _, w := range b.workloads() {
			if !selects(w.Selector, w.Template.Labels) {
				t.Errorf("%s %s/%s: selector %v does not match its pod labels %v", w.Kind, w.Namespace, w.Name, w.Selector, w.Template.Labels)
			}
			spec := w.Template.Spec
			if b.get("ServiceAccount", w.Namespace, spec.ServiceAccountName) == nil {
				t.Errorf("%s %s/%s: ServiceAccount %q is not in the build", w.Kind, w.Namespace, w.Name, spec.ServiceAccountName)
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				t.Errorf("%s %s/%s mounts an API token it has no use for", w.Kind, w.Namespace, w.Name)
			}
			for _, v := range spec.Volumes {
				if v.ConfigMap != nil && b.get("ConfigMap", w.Namespace, v.ConfigMap.Name) == nil ||
					v.Secret != nil && b.get("Secret", w.Namespace, v.Secret.SecretName) == nil {
					t.Errorf("%s %s/%s: volume %s refers to an object not in the build", w.Kind, w.Namespace, w.Name, v.Name)
				}
			}
			if len(w.Template.Spec.Containers) > 0 && pdbFor(b, w) == nil {
				t.Errorf("%s %s/%s has no PodDisruptionBudget", w.Kind, w.Namespace, w.Name)
			}
		}
		for _, o := range b.objects {
			switch v := o.Obj.(type) {
			case *corev1.Service:
				ws := b.selected(o.Namespace, &metav1.LabelSelector{MatchLabels: v.Spec.Selector})
				if len(ws) == 0 {
					t.Errorf("Service %s/%s selects no pods", o.Namespace, o.Name)
				}
				for _, w := range ws {
					for _, sp := range v.Spec.Ports {
						if !anyContainerPort(w, sp.TargetPort.String()) {
							t.Errorf("Service %s/%s port %s: targetPort %s is not a port of %s", o.Namespace, o.Name, sp.Name, sp.TargetPort.String(), w.Name)
						}
					}
				}
			case *policyv1.PodDisruptionBudget:
				if n := len(b.selected(o.Namespace, v.Spec.Selector)); n != 1 {
					t.Errorf("PodDisruptionBudget %s/%s selects %d workloads, want 1", o.Namespace, o.Name, n)
				}
			case *networkingv1.NetworkPolicy:
				if len(v.Spec.PodSelector.MatchLabels)+len(v.Spec.PodSelector.MatchExpressions) > 0 && len(b.selected(o.Namespace, &v.Spec.PodSelector)) == 0 {
					t.Errorf("NetworkPolicy %s/%s selects no pods", o.Namespace, o.Name)
				}
			case *autoscalingv2.HorizontalPodAutoscaler:
				ref := v.Spec.ScaleTargetRef
				d, _ := b.get(ref.Kind, o.Namespace, ref.Name).(*appsv1.Deployment)
				if d == nil || ref.APIVersion != "apps/v1" {
					t.Errorf("HorizontalPodAutoscaler %s/%s scales %s %s, which is not a Deployment of the build", o.Namespace, o.Name, ref.Kind, ref.Name)
					continue
				}
				if d.Spec.Replicas != nil {
					t.Errorf("Deployment %s sets replicas, which fights its HorizontalPodAutoscaler on every apply", d.Name)
				}
				for _, c := range d.Spec.Template.Spec.Containers {
					if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
						t.Errorf("Deployment %s container %s has no CPU request for the autoscaler to measure against", d.Name, c.Name)
					}
				}
			}
		}
	})
}

// anyContainerPort reports whether a port (name or number) is declared by a workload's containers.
func anyContainerPort(w workload, p string) bool {
	for i := range w.Template.Spec.Containers {
		if containerPort(&w.Template.Spec.Containers[i], p) != 0 {
			return true
		}
	}
	return false
}
