package loadtest

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// WriteHTML writes a self-contained HTML report: summary tables and inline SVG charts of the
// latency percentile curve, the per-interval p99 and the frames sent, received and lost over time.
// It loads nothing from the network.
func (r *Report) WriteHTML(w io.Writer) error {
	return htmlTmpl.Execute(w, r)
}

var phaseColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

type series struct {
	name  string
	color string
	xs    []float64
	ys    []float64
	dash  bool
}

// svgChart draws line series on linear or log axes.
func svgChart(title, xLabel, yLabel string, ss []series, logX, logY bool, xTicks []float64, xTickLabel func(float64) string) template.HTML {
	const W, H, L, R, T, B = 760.0, 300.0, 70.0, 20.0, 30.0, 45.0
	tx := func(v float64) float64 {
		if logX {
			return math.Log10(v)
		}
		return v
	}
	ty := func(v float64) float64 {
		if logY {
			return math.Log10(math.Max(v, 1e-3))
		}
		return v
	}
	minX, maxX, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for i := range s.xs {
			minX, maxX = math.Min(minX, tx(s.xs[i])), math.Max(maxX, tx(s.xs[i]))
			minY, maxY = math.Min(minY, ty(s.ys[i])), math.Max(maxY, ty(s.ys[i]))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`, W, H, W, H)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="13" font-weight="bold">%s</text>`, L, template.HTMLEscapeString(title))
	if math.IsInf(minX, 1) {
		b.WriteString(`<text x="300" y="150">no data</text></svg>`)
		return template.HTML(b.String())
	}
	if !logY {
		minY = math.Min(minY, 0)
	}
	if maxY == minY {
		maxY = minY + 1
	}
	if maxX == minX {
		maxX = minX + 1
	}
	maxY += (maxY - minY) * 0.05
	px := func(v float64) float64 { return L + (tx(v)-minX)/(maxX-minX)*(W-L-R) }
	py := func(v float64) float64 { return H - B - (ty(v)-minY)/(maxY-minY)*(H-T-B) }
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`, L, T, W-L-R, H-T-B)
	// Y ticks.
	for i := 0; i <= 5; i++ {
		v := minY + (maxY-minY)*float64(i)/5
		label := v
		if logY {
			label = math.Pow(10, v)
		}
		y := H - B - float64(i)/5*(H-T-B)
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text>`,
			L, W-R, y, y, L-4, y+4, fmtNum(label))
	}
	for _, xv := range xTicks {
		if tx(xv) < minX-1e-9 || tx(xv) > maxX+1e-9 {
			continue
		}
		x := px(xv)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#eee"/><text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`,
			x, x, T, H-B, x, H-B+14, template.HTMLEscapeString(xTickLabel(xv)))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`, L+(W-L-R)/2, H-8, template.HTMLEscapeString(xLabel))
	fmt.Fprintf(&b, `<text x="14" y="%.0f" transform="rotate(-90 14 %.0f)" text-anchor="middle">%s</text>`, T+(H-T-B)/2, T+(H-T-B)/2, template.HTMLEscapeString(yLabel))
	for i, s := range ss {
		var pts []string
		for k := range s.xs {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.xs[k]), py(s.ys[k])))
		}
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="5,3"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8"%s points="%s"/>`, s.color, dash, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%d" width="12" height="3" fill="%s"/><text x="%.0f" y="%d">%s</text>`,
			W-R-170, 40+i*14, s.color, W-R-154, 44+i*14, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 1:
		return fmt.Sprintf("%.2g", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

// latencyChart plots each phase's latency against 1/(1-percentile) on log axes.
func latencyChart(r *Report) template.HTML {
	var ss []series
	for i, p := range r.Phases {
		s := series{name: p.Name, color: phaseColors[i%len(phaseColors)]}
		for _, c := range p.Curve {
			if c.Percentile >= 100 || c.Percentile <= 0 {
				continue // the minimum and maximum have no place on a 1/(1-p) axis
			}
			s.xs = append(s.xs, 100/(100-c.Percentile))
			s.ys = append(s.ys, math.Max(c.MS, 0.001))
		}
		ss = append(ss, s)
	}
	ticks := []float64{1, 2, 10, 100, 1000, 10000, 100000}
	label := func(x float64) string {
		p := 100 - 100/x
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", p), "0"), ".") + "%"
	}
	return svgChart("Frame latency, capture → worker, by percentile", "percentile", "ms (log)", ss, true, true, ticks, label)
}

// p99Chart plots each phase's per-interval p99.
func p99Chart(r *Report) template.HTML {
	var ss []series
	for i, p := range r.Phases {
		s := series{name: p.Name + " p99", color: phaseColors[i%len(phaseColors)]}
		for _, t := range p.Timeline {
			if t.P99MS > 0 {
				s.xs = append(s.xs, t.T)
				s.ys = append(s.ys, t.P99MS)
			}
		}
		ss = append(ss, s)
	}
	return svgChart("p99 frame latency per interval", "seconds into the phase", "ms (log)", ss, false, true, timeTicks(r), secLabel)
}

// framesChart plots frames sent, received and lost per interval.
func framesChart(r *Report) template.HTML {
	var ss []series
	for i, p := range r.Phases {
		c := phaseColors[i%len(phaseColors)]
		sent := series{name: p.Name + " sent/s", color: c, dash: true}
		recv := series{name: p.Name + " received/s", color: c}
		lost := series{name: p.Name + " lost/s", color: "#ff7f0e"}
		anyLost := false
		for k, t := range p.Timeline {
			dt := t.T
			if k > 0 {
				dt = t.T - p.Timeline[k-1].T
			}
			if dt <= 0 {
				continue
			}
			sent.xs, sent.ys = append(sent.xs, t.T), append(sent.ys, float64(t.Sent)/dt)
			recv.xs, recv.ys = append(recv.xs, t.T), append(recv.ys, float64(t.Received)/dt)
			lost.xs, lost.ys = append(lost.xs, t.T), append(lost.ys, float64(t.Lost)/dt)
			anyLost = anyLost || t.Lost > 0
		}
		ss = append(ss, sent, recv)
		if anyLost {
			ss = append(ss, lost)
		}
	}
	return svgChart("Frames per second: sent, received, lost", "seconds into the phase", "frames/s", ss, false, false, timeTicks(r), secLabel)
}

func timeTicks(r *Report) []float64 {
	end := 0.0
	for _, p := range r.Phases {
		if n := len(p.Timeline); n > 0 {
			end = math.Max(end, p.Timeline[n-1].T)
		}
	}
	step := math.Max(1, math.Ceil(end/10))
	var out []float64
	for v := 0.0; v <= end; v += step {
		out = append(out, v)
	}
	return out
}

func secLabel(v float64) string { return fmt.Sprintf("%.0f", v) }

var htmlTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"latencyChart": latencyChart,
	"p99Chart":     p99Chart,
	"framesChart":  framesChart,
	"pct":          func(v float64) string { return fmt.Sprintf("%.6f%%", 100*v) },
	"cpu":          sumCPU,
	"rss":          sumRSS,
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>callrouter load test {{.Started.UTC.Format "2006-01-02 15:04:05"}}</title>
<style>
body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.pass{color:#080;font-weight:bold}.fail{color:#c00;font-weight:bold}
code{background:#f4f4f4;padding:1px 4px}
</style></head><body>
<h1>callrouter load test</h1>
<p>{{.Started.UTC.Format "2006-01-02 15:04:05 MST"}} · {{.Machine.CPUs}} CPUs ({{.Machine.CPU}}) · {{.Machine.MemMB}} MB · {{.Machine.OS}} · {{.Machine.Go}} · {{.Machine.Process}}</p>
{{with .Config}}<p>mode <b>{{.Mode}}</b>, stack {{.Stack}}, <b>{{.Calls}}</b> concurrent calls × {{.Legs}} legs, ramp {{.Ramp}}/s, call {{.CallDuration}}, run {{.RunTime}}, speed {{.Speed}}, offered {{printf "%.0f" .FramesPerSec}} frames/s<br>
inputs: {{range .Inputs}}<code>{{.}}</code> {{end}}{{if .Command}}<br>command: <code>{{.Command}}</code>{{end}}</p>{{end}}
{{if .Checked}}<p>Verdict: {{if .Pass}}<span class="pass">PASS</span>{{else}}<span class="fail">FAIL</span>{{end}}</p>
{{if .Failures}}<ul>{{range .Failures}}<li>{{.}}</li>{{end}}</ul>{{end}}{{end}}
<table><tr><th class="l"></th>{{range .Phases}}<th>{{.Name}}</th>{{end}}</tr>
<tr><td class="l">path</td>{{range .Phases}}<td>{{.Target}}</td>{{end}}</tr>
<tr><td class="l">duration s</td>{{range .Phases}}<td>{{.Duration}}</td>{{end}}</tr>
<tr><td class="l">calls started / set up</td>{{range .Phases}}<td>{{.Started}} / {{.Completed}}</td>{{end}}</tr>
<tr><td class="l">calls refused / failed</td>{{range .Phases}}<td>{{.Refused}} / {{.Failed}}</td>{{end}}</tr>
<tr><td class="l">setup p50 / p99 / max ms</td>{{range .Phases}}<td>{{.Setup.P50}} / {{.Setup.P99}} / {{.Setup.Max}}</td>{{end}}</tr>
<tr><td class="l">frames/s</td>{{range .Phases}}<td>{{printf "%.0f" .FramesRate}}</td>{{end}}</tr>
<tr><td class="l">frames sent</td>{{range .Phases}}<td>{{.Totals.Sent}}</td>{{end}}</tr>
<tr><td class="l">received</td>{{range .Phases}}<td>{{.Totals.Received}}</td>{{end}}</tr>
<tr><td class="l">lost (reported)</td>{{range .Phases}}<td>{{.Totals.Lost}}</td>{{end}}</tr>
<tr><td class="l">unaccounted</td>{{range .Phases}}<td>{{.Totals.Unaccounted}}</td>{{end}}</tr>
<tr><td class="l">loss ratio</td>{{range .Phases}}<td>{{pct .LossRatio}}</td>{{end}}</tr>
<tr><td class="l">duplicated / reordered / replayed</td>{{range .Phases}}<td>{{.Totals.Duplicated}} / {{.Totals.Reordered}} / {{.Totals.Replayed}}</td>{{end}}</tr>
<tr><td class="l">latency p50 ms</td>{{range .Phases}}<td>{{.Latency.P50}}</td>{{end}}</tr>
<tr><td class="l">latency p90 ms</td>{{range .Phases}}<td>{{.Latency.P90}}</td>{{end}}</tr>
<tr><td class="l">latency p99 ms</td>{{range .Phases}}<td><b>{{.Latency.P99}}</b></td>{{end}}</tr>
<tr><td class="l">latency p99.9 ms</td>{{range .Phases}}<td>{{.Latency.P999}}</td>{{end}}</tr>
<tr><td class="l">latency max ms</td>{{range .Phases}}<td>{{.Latency.Max}}</td>{{end}}</tr>
<tr><td class="l">CPU cores (watched processes)</td>{{range .Phases}}<td>{{printf "%.2f" (cpu .Processes)}}</td>{{end}}</tr>
<tr><td class="l">max RSS MB (watched processes)</td>{{range .Phases}}<td>{{printf "%.0f" (rss .Processes)}}</td>{{end}}</tr>
<tr><td class="l">calls active at peak</td>{{range .Phases}}<td>{{.PeakCalls}}</td>{{end}}</tr>
<tr><td class="l">pacer worst tick late ms</td>{{range .Phases}}<td>{{.PacerLate}}</td>{{end}}</tr>
<tr><td class="l">frame late p50 / p99 ms</td>{{range .Phases}}<td>{{index .FrameLate 0}} / {{index .FrameLate 1}}</td>{{end}}</tr>
<tr><td class="l">goroutine run wait p50 / p99 ms</td>{{range .Phases}}<td>{{index .SchedWait 0}} / {{index .SchedWait 1}}</td>{{end}}</tr>
<tr><td class="l">machine busy cores (others)</td>{{range .Phases}}<td>{{.Machine.BusyCores}} ({{.Machine.BackgroundCores}})</td>{{end}}</tr>
<tr><td class="l">load average at end</td>{{range .Phases}}<td>{{.Machine.LoadAvg}}</td>{{end}}</tr>
</table>
{{with .Ratio}}<p>callrouter / baseline in this run: p50 <b>{{.P50}}×</b>, p90 {{.P90}}×, p99 <b>{{.P99}}×</b>{{if .CPU}}, CPU {{.CPU}}×{{end}}{{if .MedianRoundP99}}; median of the rounds' p99 ratios {{.MedianRoundP99}}×{{end}}</p>{{end}}
{{with .Floor}}<p>callrouter / wildcard floor (one wildcard subscription per connection) in this run: p50 <b>{{.P50}}×</b>, p90 {{.P90}}×, p99 <b>{{.P99}}×</b>{{if .CPU}}, CPU {{.CPU}}×{{end}}{{if .MedianRoundP99}}; median of the rounds' p99 ratios {{.MedianRoundP99}}×{{end}}</p>{{end}}
{{with .RSS}}<p>resident memory above the baseline: <b>{{printf "%.1f" .PerCallKB}} KB per call</b> (callrouter {{printf "%.0f" .CallrouterMB}} MB − baseline {{printf "%.0f" .BaselineMB}} MB, over {{.Calls}} calls active at peak; 1 KB = 1,000 bytes){{if .MedianRoundPerCallKB}}; median of the rounds {{printf "%.1f" .MedianRoundPerCallKB}} KB{{end}}</p>{{end}}
{{if .Rounds}}<table><tr><th>round</th><th>baseline p50 ms</th><th>callrouter p50 ms</th><th>baseline p99 ms</th><th>callrouter p99 ms</th><th>p99 ratio</th><th>RSS above baseline KB per call</th></tr>
{{range .Rounds}}<tr><td>{{.Round}}</td><td>{{.Baseline.P50}}</td><td>{{.Callrouter.P50}}</td><td>{{.Baseline.P99}}</td><td>{{.Callrouter.P99}}</td><td>{{.P99Ratio}}</td><td>{{with .RSS}}{{printf "%.1f" .PerCallKB}}{{end}}</td></tr>{{end}}</table>{{end}}
{{latencyChart .}}
{{p99Chart .}}
{{framesChart .}}
{{range .Phases}}<h2>{{.Name}}</h2>
{{if .Totals.LostBy}}<p>gap causes: {{range $k, $v := .Totals.LostBy}}{{$k}} = {{$v}}; {{end}}</p>{{end}}
{{if .Totals.Stops}}<p>worker stop reasons: {{range $k, $v := .Totals.Stops}}{{$k}} = {{$v}}; {{end}}</p>{{end}}
{{if .Errors}}<ul>{{range .Errors}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .Warnings}}<ul>{{range .Warnings}}<li class="fail">{{.}}</li>{{end}}</ul>{{end}}
{{if .Processes}}<table><tr><th class="l">process</th><th>pid</th><th>CPU cores avg</th><th>peak</th><th>max RSS MB</th></tr>
{{range .Processes}}<tr><td class="l">{{.Name}} {{.Note}}</td><td>{{.PID}}</td><td>{{.CPUCores}}</td><td>{{.PeakCores}}</td><td>{{.MaxRSSMB}}</td></tr>{{end}}</table>{{end}}
{{if .WorstLegs}}<table><tr><th class="l">call</th><th>leg</th><th>sent</th><th>received</th><th>lost</th><th>unaccounted</th><th>dup</th><th>reordered</th><th class="l">causes</th><th class="l">stop</th></tr>
{{range .WorstLegs}}<tr><td class="l">{{.Call}}</td><td>{{.Leg}}</td><td>{{.Sent}}</td><td>{{.Received}}</td><td>{{.Lost}}</td><td>{{.Unaccounted}}</td><td>{{.Duplicated}}</td><td>{{.Reordered}}</td><td class="l">{{range $k, $v := .LostBy}}{{$k}}={{$v}} {{end}}</td><td class="l">{{.Stop}}</td></tr>{{end}}</table>{{end}}
{{end}}
</body></html>
`))
