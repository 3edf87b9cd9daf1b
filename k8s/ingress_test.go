package k8s

import (
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// nginx is the prefix of ingress-nginx's annotations.
const nginx = "nginx.ingress.kubernetes.io/"

// route is where an Ingress sends one request path.
type route struct {
	ing  *networkingv1.Ingress
	host string
	be   *networkingv1.IngressServiceBackend
}

// routeOf returns the Ingress rule of the build that serves path, with the host it is for.
func routeOf(b *built, path string) (route, bool) {
	for _, o := range b.objects {
		ing, ok := o.Obj.(*networkingv1.Ingress)
		if !ok {
			continue
		}
		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil {
				continue
			}
			for _, p := range r.HTTP.Paths {
				exact := p.PathType != nil && *p.PathType == networkingv1.PathTypeExact
				match := p.Path == path || !exact && strings.HasPrefix(path, strings.TrimSuffix(p.Path, "/")+"/")
				if match && p.Backend.Service != nil {
					return route{ing, r.Host, p.Backend.Service}, true
				}
			}
		}
	}
	return route{}, false
}

// tlsFor reports whether the Ingress terminates TLS for host.
func tlsFor(ing *networkingv1.Ingress, host string) bool {
	for _, t := range ing.Spec.TLS {
		for _, h := range t.Hosts {
			if h == host && t.SecretName != "" {
				return true
			}
		}
	}
	return false
}

// seconds parses a checked duration flag, failing the test on a bad one.
func seconds(t *testing.T, flags map[string]string, name string) float64 {
	t.Helper()
	d, err := time.ParseDuration(flags[name])
	if err != nil {
		t.Fatalf("flag -%s %q: %v", name, flags[name], err)
	}
	return d.Seconds()
}

// The ingest's public listener serves WHIP, the call page and the AudioHook and Twilio
// WebSockets; every overlay turns the stream servers on, and where an Ingress fronts the
// listener (production) it routes each of those paths, behind TLS, to the listener's port. The
// WebSocket paths get proxy timeouts longer than a call (a Twilio stream's server never writes),
// no per-address connection bound or cookie affinity (Genesys and Twilio send every call from a
// few addresses), no rewrite (the AudioHook signature covers path and host), and an upgrade rate
// per address whenever ingest's own is lifted.
func TestIngressRoutesThePublicPaths(t *testing.T) {
	routed := 0
	each(t, func(t *testing.T, b *built) {
		var ingest *component
		for _, c := range components(t, b) {
			if c.Checked.Component == "ingest" {
				ingest = &c
				break
			}
		}
		if ingest == nil {
			t.Fatal("no ingest container")
		}
		f := ingest.Checked.Flags
		if f["audiohook-key-file"] == "" || f["twilio-token-file"] == "" {
			t.Fatalf("AudioHook (-audiohook-key-file %q) and Twilio (-twilio-token-file %q) must be on", f["audiohook-key-file"], f["twilio-token-file"])
		}
		hasIngress := false
		for _, o := range b.objects {
			hasIngress = hasIngress || o.Kind == "Ingress"
		}
		if !hasIngress {
			return // the listener's port is reached directly (dev: kubectl port-forward)
		}
		svc, _ := b.get("Service", ingest.W.Namespace, "ingest-http").(*corev1.Service)
		if svc == nil {
			t.Fatal("no Service ingest-http")
		}
		public := containerPort(ingest.C, "whip-http")
		ws := map[string]bool{f["audiohook-path"]: true, f["twilio-path"]: true}
		for _, path := range []string{"/whip", "/call/", f["audiohook-path"], f["twilio-path"]} {
			r, ok := routeOf(b, path)
			if !ok {
				t.Errorf("no Ingress routes %s", path)
				continue
			}
			name := "Ingress " + r.ing.Name + " " + path
			if !tlsFor(r.ing, r.host) {
				t.Errorf("%s: no TLS for host %q", name, r.host)
			}
			if r.ing.Namespace != svc.Namespace || r.be.Name != svc.Name {
				t.Errorf("%s: goes to Service %s/%s, want %s/%s", name, r.ing.Namespace, r.be.Name, svc.Namespace, svc.Name)
			}
			reaches := false
			for _, sp := range svc.Spec.Ports {
				if sp.Name == r.be.Port.Name && r.be.Port.Name != "" || sp.Port == r.be.Port.Number && r.be.Port.Number != 0 {
					reaches = containerPort(ingest.C, sp.TargetPort.String()) == public
				}
			}
			if !reaches {
				t.Errorf("%s: Service port %+v does not lead to the public listener (whip-http, %d)", name, r.be.Port, public)
			}
			if !ws[path] {
				continue
			}
			routed++
			a := r.ing.Annotations
			for _, k := range []string{"proxy-read-timeout", "proxy-send-timeout"} {
				v, err := strconv.Atoi(a[nginx+k])
				if err != nil || v < 3600 || float64(v) <= seconds(t, f, "audiohook-idle-timeout") || float64(v) <= seconds(t, f, "twilio-idle-timeout") {
					t.Errorf("%s: %s %q, want at least an hour (the default 60 s cuts a Twilio stream)", name, k, a[nginx+k])
				}
			}
			for _, k := range []string{"limit-connections", "affinity", "rewrite-target"} {
				if v, ok := a[nginx+k]; ok {
					t.Errorf("%s: %s %q applies to a WebSocket path", name, k, v)
				}
			}
			for _, flag := range []string{"audiohook-upgrade-rate", "twilio-upgrade-rate"} {
				if rate, _ := strconv.ParseFloat(f[flag], 64); rate != 0 {
					continue
				}
				if v, err := strconv.Atoi(a[nginx+"limit-rps"]); err != nil || v <= 0 {
					t.Errorf("%s: -%s is lifted, yet limit-rps is %q", name, flag, a[nginx+"limit-rps"])
				}
			}
		}
	})
	if routed < 2 {
		t.Errorf("%d WebSocket paths checked behind an Ingress, want both (AudioHook, Twilio) in production", routed)
	}
}
