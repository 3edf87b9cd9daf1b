package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/cli"
	corev1 "k8s.io/api/core/v1"
)

// thirdParty are the images that run no callrouter binary (k8s/nats_test.go checks NATS's).
var thirdParty = []string{"nats:", "natsio/prometheus-nats-exporter:"}

// component is a container that runs a callrouter binary, and what its -check-config printed.
type component struct {
	W       workload
	C       *corev1.Container
	Image   image
	Checked cli.Checked
}

// target returns the Dockerfile target of an image of ours, or "".
func target(img string) string {
	name, ok := strings.CutPrefix(img, imageRepo)
	if !ok {
		return ""
	}
	name, _, _ = strings.Cut(name, "@")
	name, _, _ = strings.Cut(name, ":")
	return name
}

// runCheck runs a container's command and arguments with its environment (plus overrides) and
// CALLROUTER_CHECK_CONFIG=true, the real binary standing in for the image's entrypoint.
func runCheck(t *testing.T, b *built, w workload, c *corev1.Container, img image, overrides map[string]string) (code int, stdout, stderr string) {
	t.Helper()
	env, err := b.resolveEnv(w, c, t.TempDir())
	if err != nil {
		t.Fatalf("%s %s/%s container %s: %v", w.Kind, w.Namespace, w.Name, c.Name, err)
	}
	for k, v := range overrides {
		env.set(k, v)
	}
	env.set(cli.EnvName("check-config"), "true")
	argv := append([]string(nil), img.Entrypoint...)
	if len(c.Command) > 0 {
		argv = append([]string(nil), c.Command...)
	}
	argv = append(argv, c.Args...)
	for i := range argv {
		argv[i] = env.rewrite(env.expand(argv[i]))
	}
	if argv[0] != img.Entrypoint[0] {
		t.Fatalf("container %s runs %q, not the image's binary %s", c.Name, argv[0], img.Entrypoint[0])
	}
	bin := binary(t, img.Binary) // built once, before the check's own deadline starts
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, argv[1:]...)
	cmd.Env = env.environ()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), o.String(), e.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, o.String(), e.String()
}

var (
	componentsMu sync.Mutex
	componentsOf = map[string][]component{}
)

// components runs -check-config for every container of ours in the build (once per overlay) and
// fails the test unless each one exits 0 with its one JSON line.
func components(t *testing.T, b *built) []component {
	t.Helper()
	componentsMu.Lock()
	defer componentsMu.Unlock()
	if cs, ok := componentsOf[b.overlay]; ok {
		return cs
	}
	d := readDockerfile(t)
	var out []component
	for _, w := range b.workloads() {
		for i := range w.Template.Spec.Containers {
			c := &w.Template.Spec.Containers[i]
			tg := target(c.Image)
			if tg == "" {
				if !slices.ContainsFunc(thirdParty, func(p string) bool { return strings.HasPrefix(c.Image, p) }) {
					t.Errorf("container %s image %s is neither ours (%s<target>) nor a known third-party one", c.Name, c.Image, imageRepo)
				}
				continue
			}
			img, err := d.image(tg)
			if err != nil {
				t.Fatalf("container %s image %s: %v", c.Name, c.Image, err)
			}
			code, stdout, stderr := runCheck(t, b, w, c, img, nil)
			if code != 0 {
				t.Fatalf("%s %s/%s container %s: -check-config exit %d:\n%s", w.Kind, w.Namespace, w.Name, c.Name, code, stderr)
			}
			comp := component{W: w, C: c, Image: img}
			if err := json.Unmarshal([]byte(stdout), &comp.Checked); err != nil || strings.Count(strings.TrimSpace(stdout), "\n") > 0 {
				t.Fatalf("container %s: -check-config printed %q, want one JSON line (%v)", c.Name, stdout, err)
			}
			out = append(out, comp)
		}
	}
	componentsOf[b.overlay] = out
	return out
}

// port returns the port number of a host:port listen address.
func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Fatalf("listen address %q has no port", addr)
	}
	return int32(n)
}

// listener is a socket a binary opens, as its containerPort must declare it.
type listener struct {
	Port     int32
	Protocol corev1.Protocol
}

// listeners returns the sockets a checked binary would open, by the containerPort name the
// manifests give each.
func listeners(t *testing.T, ch cli.Checked) map[string]listener {
	out := map[string]listener{"http": {port(t, ch.HTTP), corev1.ProtocolTCP}}
	if sip := ch.Flags["sip-listen"]; sip != "" {
		for _, tr := range strings.Split(ch.Flags["sip-transports"], ",") {
			out["sip-"+tr] = listener{port(t, sip), corev1.Protocol(strings.ToUpper(tr))}
		}
	}
	if ch.Flags["whip"] == "true" {
		out["whip-udp"] = listener{port(t, ch.Flags["whip-udp"]), corev1.ProtocolUDP}
		out["whip-http"] = listener{port(t, ch.Flags["whip-listen"]), corev1.ProtocolTCP}
	}
	return out
}

func TestContainersPassCheckConfig(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		cs := components(t, b)
		var seen []string
		for _, comp := range cs {
			name := fmt.Sprintf("%s %s/%s container %s", comp.W.Kind, comp.W.Namespace, comp.W.Name, comp.C.Name)
			ch := comp.Checked
			seen = append(seen, ch.Component)
			if ch.Component != comp.Image.Binary || ch.ID != comp.W.Name+"-0" {
				t.Errorf("%s: checked as %s id %s; want %s id %s (the pod name)", name, ch.Component, ch.ID, comp.Image.Binary, comp.W.Name+"-0")
			}
			// Every socket is declared under its name, and nothing else is.
			want := listeners(t, ch)
			declared := map[string]bool{}
			for _, p := range comp.C.Ports {
				declared[p.Name] = true
				l, ok := want[p.Name]
				proto := p.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				switch {
				case !ok:
					t.Errorf("%s: containerPort %q %d is not a socket the binary opens (%v)", name, p.Name, p.ContainerPort, want)
				case l.Port != p.ContainerPort || l.Protocol != proto:
					t.Errorf("%s: containerPort %q is %d/%s; the binary listens on %d/%s", name, p.Name, p.ContainerPort, proto, l.Port, l.Protocol)
				}
				if comp.W.Template.Spec.HostNetwork && p.HostPort != p.ContainerPort {
					t.Errorf("%s: hostNetwork, but containerPort %q has hostPort %d", name, p.Name, p.HostPort)
				}
			}
			for n := range want {
				if !declared[n] {
					t.Errorf("%s: the binary listens on %s %v, which no containerPort declares", name, n, want[n])
				}
			}
			// Probes: on the http port, at paths the binary serves.
			for kind, pr := range map[string]*corev1.Probe{"liveness": comp.C.LivenessProbe, "readiness": comp.C.ReadinessProbe, "startup": comp.C.StartupProbe} {
				if pr == nil {
					continue
				}
				g := pr.HTTPGet
				if g == nil {
					t.Errorf("%s: %s probe is not an httpGet", name, kind)
					continue
				}
				if !slices.Contains(ch.Paths, g.Path) {
					t.Errorf("%s: %s probe path %q is not one of %v", name, kind, g.Path, ch.Paths)
				}
				if p := containerPort(comp.C, g.Port.String()); p != want["http"].Port || g.Host != "" || (g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP) {
					t.Errorf("%s: %s probe goes to port %s (%d) host %q scheme %q; the binary serves http on %d", name, kind, g.Port.String(), p, g.Host, g.Scheme, want["http"].Port)
				}
			}
			if get := comp.C.LivenessProbe; get == nil || get.HTTPGet == nil || get.HTTPGet.Path != "/healthz" {
				t.Errorf("%s: liveness must probe /healthz", name)
			}
			if get := comp.C.ReadinessProbe; get == nil || get.HTTPGet == nil || get.HTTPGet.Path != "/readyz" {
				t.Errorf("%s: readiness must probe /readyz", name)
			}
			// The user the image declares is the one the pod runs as.
			if uid := runAsUser(comp.W.Template, comp.C); uid != nil && *uid != comp.Image.UID {
				t.Errorf("%s: runs as uid %d; the image's USER is %d", name, *uid, comp.Image.UID)
			}
		}
		slices.Sort(seen)
		if !slices.Equal(slices.Compact(seen), targets) {
			t.Errorf("components run: %v, want each of %v", seen, targets)
		}
	})
}

// containerPort resolves a probe or policy port (a name or a number) on a container; 0 if none.
func containerPort(c *corev1.Container, p string) int32 {
	if n, err := strconv.Atoi(p); err == nil {
		for _, cp := range c.Ports {
			if cp.ContainerPort == int32(n) {
				return cp.ContainerPort
			}
		}
		return 0
	}
	for _, cp := range c.Ports {
		if cp.Name == p {
			return cp.ContainerPort
		}
	}
	return 0
}

// runAsUser returns the uid a container runs as, from its own or the pod's security context.
func runAsUser(tpl *corev1.PodTemplateSpec, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if tpl.Spec.SecurityContext != nil {
		return tpl.Spec.SecurityContext.RunAsUser
	}
	return nil
}

// The check is not vacuous: a bad value in a manifest's environment fails the binary, naming the
// flag or the variable.
func TestCheckConfigRejectsBadValues(t *testing.T) {
	b := build(t, "dev")
	d := readDockerfile(t)
	find := func(name string) (workload, *corev1.Container, image) {
		for _, w := range b.workloads() {
			if w.Name == name {
				img, err := d.image(target(w.Template.Spec.Containers[0].Image))
				if err != nil {
					t.Fatal(err)
				}
				return w, &w.Template.Spec.Containers[0], img
			}
		}
		t.Fatalf("no workload %s", name)
		return workload{}, nil, image{}
	}
	for _, tc := range []struct {
		workload string
		env      map[string]string
		want     []string
	}{
		{"worker", map[string]string{"CALLROUTER_DRAIN_TIMEOUT": "soon"}, []string{"CALLROUTER_DRAIN_TIMEOUT", "-drain-timeout"}},
		{"worker", map[string]string{"CALLROUTER_PROCESSORS": "accounting,asr"}, []string{"asr"}},
		{"worker", map[string]string{"CALLROUTER_FENCE_AFTER": "100ms"}, []string{"fence-after"}},
		{"router", map[string]string{"CALLROUTER_HTTP": "8081"}, []string{"-http"}},
		{"router", map[string]string{"CALLROUTER_NATS": "http://nats.nats.svc:4222"}, []string{"-nats"}},
		{"ingest", map[string]string{"CALLROUTER_WHIP_TOKEN_FILE": "/etc/callrouter/whip/missing"}, []string{"-whip-token-file"}},
		{"ingest", map[string]string{"CALLROUTER_SIP_ADVERTISE_IP": "node-1"}, []string{"advertise ip"}},
	} {
		w, c, img := find(tc.workload)
		code, _, stderr := runCheck(t, b, w, c, img, tc.env)
		if code != 2 {
			t.Errorf("%s with %v: exit %d, want 2", tc.workload, tc.env, code)
		}
		for _, s := range tc.want {
			if !strings.Contains(stderr, s) {
				t.Errorf("%s with %v: stderr %q does not name %q", tc.workload, tc.env, stderr, s)
			}
		}
	}
}
