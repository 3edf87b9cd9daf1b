package k8s

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// scrapeConfig is the part of Prometheus's configuration the scrape ConfigMap uses (field names
// as Prometheus spells them; a misspelt one fails the strict decode).
type scrapeConfig struct {
	ScrapeConfigs []struct {
		JobName             string `json:"job_name"`
		KubernetesSDConfigs []struct {
			Role       string `json:"role"`
			Namespaces struct {
				Names []string `json:"names"`
			} `json:"namespaces"`
		} `json:"kubernetes_sd_configs"`
		RelabelConfigs []relabel `json:"relabel_configs"`
	} `json:"scrape_configs"`
}

type relabel struct {
	SourceLabels []string `json:"source_labels"`
	Separator    *string  `json:"separator"`
	Regex        *string  `json:"regex"`
	Replacement  *string  `json:"replacement"`
	TargetLabel  string   `json:"target_label"`
	Action       string   `json:"action"`
}

// apply runs relabel rules as Prometheus does (actions replace, keep and drop; regexes anchored;
// defaults separator ";", regex "(.*)", replacement "$1"). It returns false if a rule drops the
// target.
func apply(rules []relabel, l map[string]string) (bool, error) {
	for _, r := range rules {
		sep, re, repl := ";", "(.*)", "$1"
		if r.Separator != nil {
			sep = *r.Separator
		}
		if r.Regex != nil {
			re = *r.Regex
		}
		if r.Replacement != nil {
			repl = *r.Replacement
		}
		rx, err := regexp.Compile("^(?:" + re + ")$")
		if err != nil {
			return false, err
		}
		vals := make([]string, len(r.SourceLabels))
		for i, s := range r.SourceLabels {
			vals[i] = l[s]
		}
		v := strings.Join(vals, sep)
		switch r.Action {
		case "keep":
			if !rx.MatchString(v) {
				return false, nil
			}
		case "drop":
			if rx.MatchString(v) {
				return false, nil
			}
		case "", "replace":
			if m := rx.FindStringSubmatchIndex(v); m != nil {
				l[r.TargetLabel] = string(rx.ExpandString(nil, repl, v, m))
			}
		default:
			return false, fmt.Errorf("relabel action %q is not modelled here", r.Action)
		}
	}
	return true, nil
}

// metaLabels are the labels Prometheus's pod discovery gives a pod (a target without container
// ports: its address is the pod IP), with the job's default metrics path.
func metaLabels(w workload, podIP string) map[string]string {
	l := map[string]string{"__address__": podIP, "__metrics_path__": "/metrics",
		"__meta_kubernetes_namespace": w.Namespace, "__meta_kubernetes_pod_name": w.Name + "-0", "__meta_kubernetes_pod_ip": podIP}
	sanitize := regexp.MustCompile(`[^a-zA-Z0-9_]`)
	for k, v := range w.Template.Annotations {
		l["__meta_kubernetes_pod_annotation_"+sanitize.ReplaceAllString(k, "_")] = v
	}
	for k, v := range w.Template.Labels {
		l["__meta_kubernetes_pod_label_"+sanitize.ReplaceAllString(k, "_")] = v
	}
	return l
}

// Prometheus finds every pod, scrapes it at the port and path the binary (or the NATS exporter)
// serves metrics on, and leaves everything else alone.
func TestPrometheusScrapesEveryComponent(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		cm, _ := b.get("ConfigMap", "callrouter", "prometheus-scrape").(*corev1.ConfigMap)
		if cm == nil {
			t.Fatal("no ConfigMap callrouter/prometheus-scrape")
		}
		var cfg scrapeConfig
		if err := yaml.UnmarshalStrict([]byte(cm.Data["callrouter.yml"]), &cfg); err != nil {
			t.Fatalf("callrouter.yml: %v", err)
		}
		if len(cfg.ScrapeConfigs) != 1 || len(cfg.ScrapeConfigs[0].KubernetesSDConfigs) != 1 || cfg.ScrapeConfigs[0].KubernetesSDConfigs[0].Role != "pod" {
			t.Fatalf("want one job with pod discovery, have %+v", cfg)
		}
		job := cfg.ScrapeConfigs[0]
		metricsPort := map[string]int32{} // workload → the port its metrics are on
		for _, c := range components(t, b) {
			if !slices.Contains(c.Checked.Paths, "/metrics") {
				t.Errorf("%s does not serve /metrics", c.W.Name)
			}
			metricsPort[c.W.Name] = port(t, c.Checked.HTTP)
		}
		n := natsServer(t, b)
		for _, c := range n.W.Template.Spec.Containers {
			if strings.HasPrefix(c.Image, "natsio/prometheus-nats-exporter:") {
				metricsPort[n.W.Name] = containerPort(&c, "metrics")
			}
		}
		for _, w := range b.workloads() {
			want, ok := metricsPort[w.Name]
			if !ok {
				t.Errorf("%s %s: no metrics endpoint known for it", w.Kind, w.Name)
				continue
			}
			if !slices.Contains(job.KubernetesSDConfigs[0].Namespaces.Names, w.Namespace) {
				t.Errorf("the scrape job does not discover namespace %s (%s)", w.Namespace, w.Name)
			}
			l := metaLabels(w, "100.64.1.5")
			keep, err := apply(job.RelabelConfigs, l)
			if err != nil {
				t.Fatal(err)
			}
			if wantAddr := fmt.Sprintf("100.64.1.5:%d", want); !keep || l["__address__"] != wantAddr || l["__metrics_path__"] != "/metrics" {
				t.Errorf("%s is scraped at %s%s (kept %v); its metrics are at %s/metrics", w.Name, l["__address__"], l["__metrics_path__"], keep, wantAddr)
			}
		}
		// A pod that does not ask to be scraped is not.
		other := workload{Namespace: "callrouter", Name: "other", Template: &corev1.PodTemplateSpec{}}
		if keep, _ := apply(job.RelabelConfigs, metaLabels(other, "100.64.1.6")); keep {
			t.Error("a pod without prometheus.io/scrape is scraped")
		}
	})
}
