package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The Grafana dashboard (monitoring/callrouter-dashboard.json), held to the shape of Grafana's
// dashboard model (schema version 39, Grafana 10–11) by a strict decode, and to the metrics the
// binaries register.

const dashboardFile = "monitoring/callrouter-dashboard.json"

type gDashboard struct {
	Title         string                    `json:"title"`
	UID           string                    `json:"uid"`
	Description   string                    `json:"description"`
	Tags          []string                  `json:"tags"`
	Timezone      string                    `json:"timezone"`
	Editable      bool                      `json:"editable"`
	GraphTooltip  int                       `json:"graphTooltip"`
	SchemaVersion int                       `json:"schemaVersion"`
	Version       int                       `json:"version"`
	Refresh       string                    `json:"refresh"`
	Time          struct{ From, To string } `json:"time"`
	Annotations   struct {
		List []json.RawMessage `json:"list"`
	} `json:"annotations"`
	Links      []json.RawMessage `json:"links"`
	Templating struct {
		List []gVariable `json:"list"`
	} `json:"templating"`
	Panels []gPanel `json:"panels"`
}

type gDatasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type gVariable struct {
	Name       string          `json:"name"`
	Label      string          `json:"label"`
	Type       string          `json:"type"`
	Datasource *gDatasourceRef `json:"datasource"`
	Query      json.RawMessage `json:"query"` // a plugin id (datasource) or a query object
	Definition string          `json:"definition"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	Current    json.RawMessage `json:"current"`
	Hide       int             `json:"hide"`
	Refresh    int             `json:"refresh"`
	Options    []any           `json:"options"`
	Regex      string          `json:"regex"`
	Sort       int             `json:"sort"`
}

type gPanel struct {
	Type        string          `json:"type"`
	ID          int             `json:"id"`
	Title       string          `json:"title"`
	Description string          `json:"description"`
	Datasource  *gDatasourceRef `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Collapsed   bool      `json:"collapsed"`
	Repeat      string    `json:"repeat"`
	Panels      []gPanel  `json:"panels"` // a collapsed row's panels
	Targets     []gTarget `json:"targets"`
	FieldConfig *struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
		Overrides []json.RawMessage `json:"overrides"`
	} `json:"fieldConfig"`
	Options json.RawMessage `json:"options"`
}

type gTarget struct {
	RefID        string          `json:"refId"`
	Datasource   *gDatasourceRef `json:"datasource"`
	Expr         string          `json:"expr"`
	LegendFormat string          `json:"legendFormat"`
}

func loadDashboard(t *testing.T) gDashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d gDashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s does not have the shape of a Grafana dashboard: %v", dashboardFile, err)
	}
	return d
}

// Panel types of Grafana's core plugins that the dashboard may use, and units it knows.
var (
	panelTypes = []string{"row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap"}
	units      = []string{"short", "s", "ms", "percentunit", "bytes", "Bps", "reqps", "none"}
	builtins   = []string{"__rate_interval", "__interval", "__range", "__name"} // Grafana's own variables
)

func TestDashboardHasGrafanasShape(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || !regexp.MustCompile(`^[A-Za-z0-9_-]{1,40}$`).MatchString(d.UID) {
		t.Errorf("title %q, uid %q: Grafana needs a title and a uid of at most 40 [A-Za-z0-9_-]", d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: datasource references by uid need 36 or later", d.SchemaVersion)
	}
	vars := map[string]gVariable{}
	for _, v := range d.Templating.List {
		if _, dup := vars[v.Name]; dup || v.Name == "" {
			t.Errorf("variable %q is empty or defined twice", v.Name)
		}
		vars[v.Name] = v
	}
	if ds, ok := vars["datasource"]; !ok || ds.Type != "datasource" || string(ds.Query) != `"prometheus"` {
		t.Errorf("no Prometheus datasource variable: %+v", ds)
	}
	varRef := regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
	checkVars := func(where, s string) {
		for _, m := range varRef.FindAllStringSubmatch(s, -1) {
			if _, ok := vars[m[1]]; !ok && !slices.Contains(builtins, m[1]) {
				t.Errorf("%s uses $%s, which the dashboard does not define", where, m[1])
			}
		}
	}
	checkDS := func(where string, ds *gDatasourceRef) {
		if ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want the $datasource variable", where, ds)
		}
	}
	ids := map[int]bool{}
	type cell struct{ x, y int }
	taken := map[cell]int{}
	var rowVars []string
	for _, p := range allPanels(d.Panels) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 || ids[p.ID] {
			t.Errorf("%s: ids must be positive and unique", where)
		}
		ids[p.ID] = true
		if !slices.Contains(panelTypes, p.Type) {
			t.Errorf("%s: type %q is not a core panel type", where, p.Type)
		}
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v outside Grafana's 24-column grid", where, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("%s overlaps panel %d at (%d,%d)", where, other, x, y)
				}
				taken[cell{x, y}] = p.ID
			}
		}
		checkVars(where+" title", p.Title)
		if p.Type == "row" {
			if g.W != 24 || g.H != 1 {
				t.Errorf("%s: a row spans the grid, one unit high", where)
			}
			if p.Repeat != "" {
				v, ok := vars[p.Repeat]
				if !ok || !v.Multi || !v.IncludeAll {
					t.Errorf("%s repeats over %q, which must be a multi-value variable with All", where, p.Repeat)
				}
				rowVars = append(rowVars, p.Repeat)
			}
			continue
		}
		checkDS(where, p.Datasource)
		if p.FieldConfig == nil || !slices.Contains(units, p.FieldConfig.Defaults.Unit) {
			t.Errorf("%s: fieldConfig.defaults.unit missing or unknown", where)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s queries nothing", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: target %q: refIds unique and non-empty, expr non-empty", where, tg.RefID)
			}
			refs[tg.RefID] = true
			checkDS(where+" target "+tg.RefID, tg.Datasource)
			checkVars(where+" target "+tg.RefID, tg.Expr)
		}
	}
	if len(rowVars) == 0 {
		t.Error("no per-tenant row (a row repeated over $tenant)")
	}
}

// allPanels flattens rows' nested panels.
func allPanels(ps []gPanel) []gPanel {
	var out []gPanel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// registeredMetrics returns every metric name the binaries register, read from the source: each
// string literal "callrouter_…" in a non-test file under internal/ and cmd/ (the names of
// prometheus.*Opts and NewDesc), and which of them are histograms.
func registeredMetrics(t *testing.T) (names, histograms map[string]bool) {
	t.Helper()
	names, histograms = map[string]bool{}, map[string]bool{}
	name := regexp.MustCompile(`^callrouter_[a-z0-9_]+[a-z0-9]$`)
	for _, dir := range []string{"../internal", "../cmd"} {
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.BasicLit:
					if s, err := strconv.Unquote(n.Value); err == nil && n.Kind == token.STRING && name.MatchString(s) {
						names[s] = true
					}
				case *ast.CompositeLit:
					if sel, ok := n.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "HistogramOpts" {
						for _, e := range n.Elts {
							if kv, ok := e.(*ast.KeyValueExpr); ok {
								if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Name" {
									if lit, ok := kv.Value.(*ast.BasicLit); ok {
										s, _ := strconv.Unquote(lit.Value)
										histograms[s] = true
									}
								}
							}
						}
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(names) < 40 || len(histograms) < 3 {
		t.Fatalf("found %d metric names and %d histograms in the source: the scan is broken", len(names), len(histograms))
	}
	return names, histograms
}

// exporterMetrics are the NATS exporter's series the dashboard and rules use; the exporter
// container must run with the flags that produce them (checked below).
var exporterMetrics = map[string]string{"nats_varz_slow_consumers": "-varz", "nats_varz_connections": "-varz"}

// metricRef finds metric names in PromQL: ours, the exporter's and Prometheus's own up.
var metricRef = regexp.MustCompile(`\b(callrouter_[a-z0-9_]+|nats_[a-z0-9_]+|up)\b\s*[{\[)]?`)

// checkMetrics fails for every metric expr uses that nothing provides; it returns how many it
// found.
func checkMetrics(t *testing.T, where, expr string, names, histograms map[string]bool) int {
	t.Helper()
	found := 0
	for _, m := range metricRef.FindAllStringSubmatch(expr, -1) {
		n := m[1]
		found++
		switch {
		case n == "up" || exporterMetrics[n] != "" || names[n]:
		case strings.HasSuffix(n, "_bucket") && histograms[strings.TrimSuffix(n, "_bucket")]:
		case (strings.HasSuffix(n, "_sum") || strings.HasSuffix(n, "_count")) && histograms[strings.TrimSuffix(strings.TrimSuffix(n, "_sum"), "_count")]:
		default:
			t.Errorf("%s queries %s, which no binary registers (nor the NATS exporter)", where, n)
		}
	}
	return found
}

func TestDashboardQueriesRegisteredMetrics(t *testing.T) {
	names, histograms := registeredMetrics(t)
	d := loadDashboard(t)
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
			if checkMetrics(t, where, tg.Expr, names, histograms) == 0 {
				t.Errorf("%s queries no metric: %s", where, tg.Expr)
			}
			if strings.Contains(tg.Expr, "_bucket") && !strings.Contains(tg.Expr, "histogram_quantile") {
				t.Errorf("%s reads buckets without histogram_quantile", where)
			}
		}
	}
	checkExporterFlags(t)
}

// checkExporterFlags: the NATS StatefulSet's exporter runs with the flags the exporter metrics
// need, and -prefix=nats, which gives them their names.
func checkExporterFlags(t *testing.T) {
	t.Helper()
	for _, o := range build(t, "production").objects {
		ss, ok := o.Obj.(*appsv1.StatefulSet)
		if !ok || ss.Name != "nats" {
			continue
		}
		for _, c := range ss.Spec.Template.Spec.Containers {
			if c.Name != "exporter" {
				continue
			}
			for n, flag := range exporterMetrics {
				if !slices.Contains(c.Args, flag) || !slices.Contains(c.Args, "-prefix=nats") {
					t.Errorf("%s needs the exporter's %s and -prefix=nats; its args are %q", n, flag, c.Args)
				}
			}
			return
		}
	}
	t.Error("no NATS exporter container in the production overlay")
}

func TestMonitoringConfigMapsAreInEveryOverlay(t *testing.T) {
	for _, ov := range overlays {
		found := map[string]bool{}
		for _, o := range build(t, ov).objects {
			cm, ok := o.Obj.(*corev1.ConfigMap)
			if !ok {
				continue
			}
			switch {
			case cm.Name == "callrouter-dashboard" && cm.Labels["grafana_dashboard"] == "1" && cm.Data["callrouter-dashboard.json"] != "":
				found[cm.Name] = true
			case cm.Name == "callrouter-alert-rules" && cm.Data["callrouter-rules.yml"] != "":
				found[cm.Name] = true
			}
		}
		if !found["callrouter-dashboard"] || !found["callrouter-alert-rules"] {
			t.Errorf("overlay %s: monitoring ConfigMaps found %v", ov, found)
		}
	}
}
