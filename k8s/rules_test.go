package k8s

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/callrouter/callrouter/internal/peertest"
	"sigs.k8s.io/yaml"
)

// The alert rules (monitoring/callrouter-rules.yml and its PrometheusRule twin), checked and
// unit-tested by promtool, with a runbook each in docs/operations.md.

const rulesFile = "monitoring/callrouter-rules.yml"

type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func loadRules(t *testing.T) ruleGroups {
	t.Helper()
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var g ruleGroups
	if err := yaml.UnmarshalStrict(data, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

func alerts(t *testing.T) []rule {
	var out []rule
	for _, g := range loadRules(t).Groups {
		out = append(out, g.Rules...)
	}
	if len(out) < 10 {
		t.Fatalf("%d alert rules", len(out))
	}
	return out
}

// promtool returns the path of promtool (Debian package prometheus), or stops the test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		peertest.Missing(t, "promtool not installed (apt-get install prometheus)")
	}
	return p
}

func TestAlertRulesPassPromtool(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", "callrouter-rules.yml"}, {"test", "rules", "callrouter-rules.test.yml"}} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = "monitoring"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every dashboard query is valid PromQL: promtool checks them as recording rules, with Grafana's
// variables replaced as Grafana would.
func TestDashboardQueriesParse(t *testing.T) {
	bin := promtool(t)
	var g ruleGroups
	g.Groups = append(g.Groups, struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	}{Name: "dashboard"})
	vars := strings.NewReplacer("$__rate_interval", "1m", "$tenant", ".*", "$datasource", "")
	for _, p := range allPanels(loadDashboard(t).Panels) {
		for _, tg := range p.Targets {
			g.Groups[0].Rules = append(g.Groups[0].Rules, rule{Record: fmt.Sprintf("dashboard:panel_%d_%s", p.ID, tg.RefID), Expr: vars.Replace(tg.Expr)})
		}
	}
	data, err := yaml.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("a dashboard query is not valid PromQL: %v\n%s", err, out)
	}
}

func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	data, err := os.ReadFile("monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec ruleGroups `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(data, &pr); err != nil {
		t.Fatal(err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" || pr.Metadata.Name == "" || pr.Metadata.Namespace == "" {
		t.Errorf("not a PrometheusRule: %s %s %+v", pr.APIVersion, pr.Kind, pr.Metadata)
	}
	if want := loadRules(t); !reflect.DeepEqual(pr.Spec, want) {
		t.Errorf("prometheusrule.yaml and %s differ: regenerate the PrometheusRule from the rules file", rulesFile)
	}
}

func TestAlertRulesQueryRegisteredMetrics(t *testing.T) {
	names, histograms := registeredMetrics(t)
	for _, r := range alerts(t) {
		if checkMetrics(t, "alert "+r.Alert, r.Expr, names, histograms) == 0 {
			t.Errorf("alert %s reads no metric", r.Alert)
		}
	}
}

// Every alert has a severity, a summary, a runbook section in docs/operations.md that its
// annotation points at, and a promtool unit test in which it fires.
func TestEveryAlertHasARunbookAndATest(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("monitoring/callrouter-rules.test.yml")
	if err != nil {
		t.Fatal(err)
	}
	var ut struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &ut); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range ut.Tests {
		for _, a := range tc.AlertRuleTest {
			fires[a.Alertname] = fires[a.Alertname] || len(a.ExpAlerts) > 0
		}
	}
	headings := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^### (Callrouter[A-Za-z]+)`).FindAllStringSubmatch(string(doc), -1) {
		headings[m[1]] = true
	}
	for _, r := range alerts(t) {
		if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
			t.Errorf("%s: severity %q", r.Alert, sev)
		}
		if r.Annotations["summary"] == "" {
			t.Errorf("%s has no summary", r.Alert)
		}
		anchor := strings.TrimPrefix(r.Annotations["runbook"], "docs/operations.md#")
		section := ""
		for h := range headings {
			if strings.ToLower(h) == anchor {
				section = h
			}
		}
		if section == "" {
			t.Errorf("%s: runbook %q has no \"### \" section in docs/operations.md", r.Alert, r.Annotations["runbook"])
		}
		if !fires[r.Alert] {
			t.Errorf("%s fires in no promtool unit test", r.Alert)
		}
	}
}
