package k8s

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
)

// natsNode is the NATS StatefulSet and its server container's configuration as nats-server
// parses it.
type natsNode struct {
	Set   *appsv1.StatefulSet
	W     workload
	C     *corev1.Container
	Opts  *server.Options
	Env   *containerEnv
	Sleep int // seconds the preStop hook waits after signalling lame duck
	Conf  string
}

// natsServer finds the NATS StatefulSet and parses its nats.conf, with the container's
// environment (POD_NAME, the route password) set, by the nats-server version callrouter builds with.
func natsServer(t *testing.T, b *built) natsNode {
	t.Helper()
	var n natsNode
	for _, w := range b.workloads() {
		for i, c := range w.Template.Spec.Containers {
			if strings.HasPrefix(c.Image, "nats:") {
				n.W, n.C = w, &w.Template.Spec.Containers[i]
			}
		}
	}
	if n.C == nil {
		t.Fatal("no nats: container in the build")
	}
	n.Set, _ = b.get("StatefulSet", n.W.Namespace, n.W.Name).(*appsv1.StatefulSet)
	if n.Set == nil {
		t.Fatalf("nats runs in a %s, want a StatefulSet", n.W.Kind)
	}
	env, err := b.resolveEnv(n.W, n.C, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n.Env = env
	for _, k := range env.Order {
		t.Setenv(k, env.Vars[k])
	}
	argv := append(append([]string(nil), n.C.Command...), n.C.Args...)
	conf := ""
	for i, a := range argv {
		if (a == "--config" || a == "-c") && i+1 < len(argv) {
			conf = argv[i+1]
		}
	}
	if len(argv) == 0 || argv[0] != "nats-server" || conf == "" {
		t.Fatalf("nats container runs %q; want nats-server --config <file>", argv)
	}
	// nats.conf names files of other mounts (auth.conf, the certificates) by absolute path:
	// parse a copy, next to it, that names the files written for them.
	text, err := os.ReadFile(env.rewrite(conf))
	if err != nil {
		t.Fatal(err)
	}
	patched := regexp.MustCompile(`"(/[^"]+)"`).ReplaceAllStringFunc(string(text), func(q string) string {
		return strconv.Quote(env.rewrite(strings.Trim(q, `"`)))
	})
	copyPath := env.rewrite(conf) + ".test"
	if err := os.WriteFile(copyPath, []byte(patched), 0o600); err != nil {
		t.Fatal(err)
	}
	if n.Opts, err = server.ProcessConfigFile(copyPath); err != nil {
		t.Fatalf("nats-server rejects %s: %v", conf, err)
	}
	n.Conf = env.rewrite(conf)
	if ps := n.C.Lifecycle; ps != nil && ps.PreStop != nil && ps.PreStop.Exec != nil {
		if m := regexp.MustCompile(`sleep (\d+)`).FindStringSubmatch(strings.Join(ps.PreStop.Exec.Command, " ")); m != nil {
			n.Sleep, _ = strconv.Atoi(m[1])
		}
	}
	return n
}

// goModVersion returns the version go.mod requires of a module.
func goModVersion(t *testing.T, module string) string {
	t.Helper()
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(module) + `\s+v(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("go.mod does not require %s", module)
	}
	return string(m[1])
}

func TestNATSCluster(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		n := natsServer(t, b)
		o := n.Opts
		if v := goModVersion(t, "github.com/nats-io/nats-server/v2"); !strings.HasPrefix(n.C.Image, "nats:"+v) {
			t.Errorf("image %s; want nats:%s (go.mod's nats-server, whose parser checked nats.conf)", n.C.Image, v)
		}
		if o.JetStream {
			t.Error("JetStream is on; callrouter is Core NATS only")
		}
		if o.ServerName != n.W.Name+"-0" {
			t.Errorf("server_name %q; want the pod name (POD_NAME)", o.ServerName)
		}
		// Ports: what nats.conf opens is what the pod declares and the Services target.
		for name, p := range map[string]int{"client": o.Port, "cluster": o.Cluster.Port, "monitor": o.HTTPPort} {
			if got := containerPort(n.C, name); int(got) != p || p == 0 {
				t.Errorf("containerPort %q is %d; nats.conf opens %d", name, got, p)
			}
		}
		for kind, pr := range map[string]*corev1.Probe{"liveness": n.C.LivenessProbe, "readiness": n.C.ReadinessProbe, "startup": n.C.StartupProbe} {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != "/healthz" || int(containerPort(n.C, pr.HTTPGet.Port.String())) != o.HTTPPort {
				t.Errorf("%s probe %+v; want httpGet /healthz on the monitoring port %d", kind, pr, o.HTTPPort)
			}
		}
		// Routes: one per StatefulSet pod, by its stable name under the headless Service.
		replicas := int32(1)
		if n.Set.Spec.Replicas != nil {
			replicas = *n.Set.Spec.Replicas
		}
		if replicas != 3 {
			t.Errorf("%d NATS nodes, want 3", replicas)
		}
		var routes, want []string
		for _, r := range o.Routes {
			routes = append(routes, r.Host)
		}
		for i := range replicas {
			want = append(want, fmt.Sprintf("%s-%d.%s:%d", n.Set.Name, i, n.Set.Spec.ServiceName, o.Cluster.Port))
		}
		if !slices.Equal(routes, want) || o.Cluster.Name == "" {
			t.Errorf("cluster %q routes %v; want %v", o.Cluster.Name, routes, want)
		}
		hs, _ := b.get("Service", n.W.Namespace, n.Set.Spec.ServiceName).(*corev1.Service)
		if hs == nil || hs.Spec.ClusterIP != corev1.ClusterIPNone || !hs.Spec.PublishNotReadyAddresses {
			t.Errorf("Service %s: want a headless Service publishing not-ready addresses, have %+v", n.Set.Spec.ServiceName, hs)
		}
		// Lame duck on the way out: preStop signals the pid file nats.conf writes, on a writable volume.
		ps := n.C.Lifecycle
		if ps == nil || ps.PreStop == nil || ps.PreStop.Exec == nil || !strings.Contains(strings.Join(ps.PreStop.Exec.Command, " "), "--signal ldm="+o.PidFile) {
			t.Errorf("preStop %+v; want nats-server --signal ldm=%s", ps, o.PidFile)
		}
		if o.PidFile == "" || !writable(n.W, n.C, o.PidFile) {
			t.Errorf("pid_file %q is not on a writable volume (the root filesystem is read-only)", o.PidFile)
		}
		if n.Sleep*1e9 >= int(o.LameDuckGracePeriod) {
			t.Errorf("preStop sleeps %ds, past the lame-duck grace period %v", n.Sleep, o.LameDuckGracePeriod)
		}
		pdb := pdbFor(b, n.W)
		if pdb == nil || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("want a PodDisruptionBudget with maxUnavailable 1 for %s, have %+v", n.W.Name, pdb)
		}
		// A replay reply holds up to a ring per leg: two legs must fit.
		for _, comp := range components(t, b) {
			if rb := comp.Checked.Flags["ring-max-bytes"]; rb != "" {
				if n, _ := strconv.Atoi(rb); int64(o.MaxPayload) < 2*int64(n) {
					t.Errorf("max_payload %d is under two legs of %s's ring (-ring-max-bytes %d)", o.MaxPayload, comp.W.Name, n)
				}
			}
		}
		// The exporter reads this server's monitoring port and serves what the pod says to scrape.
		for _, c := range n.W.Template.Spec.Containers {
			if strings.HasPrefix(c.Image, "natsio/prometheus-nats-exporter:") {
				args := strings.Join(c.Args, " ")
				if !strings.Contains(args, fmt.Sprintf("http://localhost:%d", o.HTTPPort)) || !strings.Contains(args, fmt.Sprintf("-port=%d", containerPort(&c, "metrics"))) {
					t.Errorf("exporter args %q; want -port=<metrics port> and http://localhost:%d", args, o.HTTPPort)
				}
			}
		}
	})
}

// Every component reaches the NATS Service over TLS (the CA in its Secret verifies the servers'
// certificate for that host) and signs in with an nkey that nats.conf's generated authorization
// block has, with the permissions of its role; routes are TLS with verified certificates and a
// password; and that block is what callrouter-auth generates from k8s/identities.conf.
func TestComponentsReachNATS(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		n := natsServer(t, b)
		o := n.Opts
		users := map[string]*server.NkeyUser{}
		for _, u := range o.Nkeys {
			users[u.Nkey] = u
		}
		if len(users) == 0 || len(o.Users) != 0 {
			t.Fatalf("nats.conf has %d nkey users and %d password users; want the generated nkey users only", len(users), len(o.Users))
		}
		if o.TLSConfig == nil {
			t.Fatal("client connections are not TLS")
		}
		if o.Cluster.TLSConfig == nil || o.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
			t.Error("routes: want TLS that verifies the other node's certificate")
		}
		for _, r := range o.Routes {
			if pw, _ := r.User.Password(); r.User == nil || r.User.Username() != o.Cluster.Username || pw != o.Cluster.Password || pw == "" {
				t.Errorf("route %s does not carry the cluster's route user and password", r.Redacted())
			}
		}
		svc, _ := b.get("Service", n.W.Namespace, n.W.Name).(*corev1.Service)
		if svc == nil {
			t.Fatalf("no Service %s/%s for clients", n.W.Namespace, n.W.Name)
		}
		host := fmt.Sprintf("%s.%s.svc", svc.Name, svc.Namespace)
		serverCert := o.TLSConfig.Certificates[0].Leaf
		if serverCert == nil {
			var err error
			if serverCert, err = x509.ParseCertificate(o.TLSConfig.Certificates[0].Certificate[0]); err != nil {
				t.Fatal(err)
			}
		}
		roles := map[string]string{"router": natsauth.RoleRouter, "worker": natsauth.RoleWorker, "ingest": natsauth.RoleIngest}
		for _, comp := range components(t, b) {
			env, err := b.resolveEnv(comp.W, comp.C, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			for _, raw := range strings.Split(env.Vars["CALLROUTER_NATS"], ",") {
				u, err := url.Parse(raw)
				if err != nil || u.Scheme != "tls" || u.User != nil {
					t.Errorf("%s: CALLROUTER_NATS %q; want tls://<host>:<port> without a password", comp.W.Name, raw)
					continue
				}
				if u.Hostname() != host || !servicePortTargets(svc, u.Port(), n.C, "client") {
					t.Errorf("%s: NATS URL host %s; want %s:<the Service port of the client port>", comp.W.Name, u.Host, host)
				}
			}
			ca, err := os.ReadFile(env.rewrite(env.Vars["CALLROUTER_NATS_TLS_CA"]))
			pool := x509.NewCertPool()
			if err != nil || !pool.AppendCertsFromPEM(ca) {
				t.Errorf("%s: CALLROUTER_NATS_TLS_CA: %v", comp.W.Name, err)
			} else if _, err := serverCert.Verify(x509.VerifyOptions{DNSName: host, Roots: pool, CurrentTime: serverCert.NotBefore.Add(2 * time.Hour)}); err != nil {
				t.Errorf("%s: its CA does not verify the servers' certificate for %s: %v", comp.W.Name, host, err)
			}
			seed, err := os.ReadFile(env.rewrite(env.Vars["CALLROUTER_NATS_NKEY"]))
			if err != nil {
				t.Errorf("%s: CALLROUTER_NATS_NKEY: %v", comp.W.Name, err)
				continue
			}
			kp, err := nkeys.ParseDecoratedNKey(seed)
			if err != nil {
				t.Errorf("%s: nkey: %v", comp.W.Name, err)
				continue
			}
			pub, _ := kp.PublicKey()
			u := users[pub]
			if u == nil {
				t.Errorf("%s: its nkey %s is not a user of nats.conf", comp.W.Name, pub)
				continue
			}
			// Its permissions are its role's, as generated.
			role := roles[target(comp.C.Image)]
			spec, err := natsauth.ParseFile("identities.conf")
			if err != nil {
				t.Fatal(err)
			}
			id, ok := natsauth.Find(spec.Identities(), role, "default", "")
			pubAllow, subAllow := id.Grants(pub)
			if !ok || u.Permissions == nil || !slices.Equal(u.Permissions.Publish.Allow, pubAllow) || !slices.Equal(u.Permissions.Subscribe.Allow, subAllow) {
				t.Errorf("%s: permissions %+v; want the %s role's", comp.W.Name, u.Permissions, role)
			}
		}
		// auth.conf is what the generator writes from identities.conf and the overlay's keys.
		spec, err := natsauth.ParseFile("identities.conf")
		if err != nil {
			t.Fatal(err)
		}
		ids := spec.Identities()
		keys := natsauth.Keys{}
		for _, id := range ids {
			seed, err := readSecretFile(b.overlay, "nats/"+id.Name+".nk")
			if err != nil {
				t.Fatalf("%s: run callrouter-auth keys -spec k8s/identities.conf -out k8s/overlays/%s/secrets/nats", err, b.overlay)
			}
			kp, err := nkeys.ParseDecoratedNKey(seed)
			if err != nil {
				t.Fatal(err)
			}
			keys[id.Name], _ = kp.Seed()
		}
		want, err := natsauth.Conf(ids, keys)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readSecretFile(b.overlay, "nats/auth.conf")
		if err != nil || string(got) != string(want) {
			t.Errorf("overlays/%s/secrets/nats/auth.conf is not what callrouter-auth keys generates from identities.conf (%v)", b.overlay, err)
		}
	})
}

// readSecretFile reads a file of an overlay's secrets directory, or its .example.
func readSecretFile(overlay, name string) ([]byte, error) {
	path := filepath.Join("overlays", overlay, "secrets", name)
	if data, err := os.ReadFile(path + ".example"); err == nil {
		return data, nil
	}
	return os.ReadFile(path)
}

// servicePortTargets reports whether a Service port (a number, as a string) leads to the named
// port of the container.
func servicePortTargets(svc *corev1.Service, port string, c *corev1.Container, name string) bool {
	for _, sp := range svc.Spec.Ports {
		if strconv.Itoa(int(sp.Port)) == port {
			return containerPort(c, sp.TargetPort.String()) == containerPort(c, name)
		}
	}
	return false
}

// writable reports whether a path in the container is on a mounted emptyDir.
func writable(w workload, c *corev1.Container, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.ReadOnly || !strings.HasPrefix(path, m.MountPath+"/") {
			continue
		}
		for _, v := range w.Template.Spec.Volumes {
			if v.Name == m.Name && v.EmptyDir != nil {
				return true
			}
		}
	}
	return false
}

// pdbFor returns the PodDisruptionBudget that selects a workload's pods.
func pdbFor(b *built, w workload) *policyv1.PodDisruptionBudget {
	for _, o := range b.objects {
		if p, ok := o.Obj.(*policyv1.PodDisruptionBudget); ok && o.Namespace == w.Namespace && selects(p.Spec.Selector, w.Template.Labels) {
			return p
		}
	}
	return nil
}
