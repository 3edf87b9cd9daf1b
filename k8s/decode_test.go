package k8s

import "testing"

func TestOverlaysBuildAndDecodeStrictly(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		count := map[string]int{}
		for _, o := range b.objects {
			count[o.Kind]++
		}
		// What the deployment is made of; a build that lost a kind would still decode.
		for kind, min := range map[string]int{"Namespace": 3, "StatefulSet": 1, "Deployment": 3, "PodDisruptionBudget": 4,
			"HorizontalPodAutoscaler": 1, "NetworkPolicy": 5, "ConfigMap": 5, "Secret": 4, "Service": 3, "ServiceAccount": 4} {
			if count[kind] < min {
				t.Errorf("%d %s objects, want at least %d", count[kind], kind, min)
			}
		}
	})
}

func TestDecodeRejectsWhatTheAPIServerWould(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replica":2}}`,
		"case mismatch": `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"Replicas":2}}`,
		"duplicate":     `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":"1"},"data":{"a":"2"}}`,
		"wrong type":    `{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":[{"port":"http"}]}}`,
		"unknown kind":  `{"apiVersion":"monitoring.coreos.com/v1","kind":"ServiceMonitor","metadata":{"name":"x"}}`,
	} {
		if _, err := decode([]byte(doc)); err == nil {
			t.Errorf("%s: %s decoded", name, doc)
		}
	}
	if o, err := decode([]byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x","namespace":"y"},"spec":{"replicas":2}}`)); err != nil || o.Name != "x" || o.Namespace != "y" {
		t.Errorf("a good object: %+v, %v", o, err)
	}
}
