package k8s

import (
	"net/netip"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// endpoint is one end of a connection: a pod (Labels set) or a host address (Labels nil: a
// node, or anything outside the cluster).
type endpoint struct {
	Namespace string
	Labels    map[string]string
	IP        string
	W         *workload // the pod's workload, when it is one of the build's (to resolve named ports)
}

// nsLabels returns a namespace's labels: the build's, or the given ones for namespaces the build
// does not hold, plus the kubernetes.io/metadata.name label every namespace has.
func (b *built) nsLabels(ns string, extra map[string]string) map[string]string {
	out := map[string]string{"kubernetes.io/metadata.name": ns}
	if n, ok := b.get("Namespace", "", ns).(*corev1.Namespace); ok {
		for k, v := range n.Labels {
			out[k] = v
		}
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// peerMatches reports whether a policy peer (of a policy in namespace ns) matches an endpoint.
func (b *built) peerMatches(ns string, p networkingv1.NetworkPolicyPeer, e endpoint, eNSLabels map[string]string) bool {
	if p.IPBlock != nil {
		pre, err := netip.ParsePrefix(p.IPBlock.CIDR)
		ip, err2 := netip.ParseAddr(e.IP)
		if err != nil || err2 != nil || !pre.Contains(ip) {
			return false
		}
		for _, ex := range p.IPBlock.Except {
			if x, err := netip.ParsePrefix(ex); err == nil && x.Contains(ip) {
				return false
			}
		}
		return true
	}
	if e.Labels == nil { // a host address is matched by ipBlocks only
		return false
	}
	if p.NamespaceSelector != nil {
		if !selects(p.NamespaceSelector, eNSLabels) {
			return false
		}
	} else if e.Namespace != ns {
		return false
	}
	return p.PodSelector == nil || selects(p.PodSelector, e.Labels)
}

// portMatches reports whether a policy port admits a connection to port/proto of dst.
func portMatches(ports []networkingv1.NetworkPolicyPort, dst endpoint, port int32, proto corev1.Protocol) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		n := p.Port.IntVal
		if p.Port.StrVal != "" { // a named port, of the destination pod
			n = 0
			if dst.W != nil {
				for _, c := range dst.W.Template.Spec.Containers {
					for _, cp := range c.Ports {
						if cp.Name == p.Port.StrVal && (cp.Protocol == proto || cp.Protocol == "" && proto == corev1.ProtocolTCP) {
							n = cp.ContainerPort
						}
					}
				}
			}
		}
		end := n
		if p.EndPort != nil {
			end = *p.EndPort
		}
		if n != 0 && port >= n && port <= end {
			return true
		}
	}
	return false
}

// hasType reports whether a policy governs a direction (policyTypes defaults as the API does).
func hasType(p *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	types := p.Spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(p.Spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

// allowed evaluates the build's NetworkPolicies for a connection from src to dst:port/proto:
// the destination's ingress policies and the source's egress policies must both let it through.
// Endpoints with nil Labels are hosts, to which no policy applies.
func (b *built) allowed(src, dst endpoint, srcNS, dstNS map[string]string, port int32, proto corev1.Protocol) bool {
	direction := func(pod endpoint, peer endpoint, peerNS map[string]string, t networkingv1.PolicyType) bool {
		if pod.Labels == nil {
			return true
		}
		governed := false
		for _, o := range b.objects {
			p, ok := o.Obj.(*networkingv1.NetworkPolicy)
			if !ok || o.Namespace != pod.Namespace || !hasType(p, t) || !selects(&p.Spec.PodSelector, pod.Labels) {
				continue
			}
			governed = true
			type rule struct {
				peers []networkingv1.NetworkPolicyPeer
				ports []networkingv1.NetworkPolicyPort
			}
			var rules []rule
			if t == networkingv1.PolicyTypeIngress {
				for _, r := range p.Spec.Ingress {
					rules = append(rules, rule{r.From, r.Ports})
				}
			} else {
				for _, r := range p.Spec.Egress {
					rules = append(rules, rule{r.To, r.Ports})
				}
			}
			for _, r := range rules {
				peerOK := len(r.peers) == 0
				for _, pe := range r.peers {
					peerOK = peerOK || b.peerMatches(o.Namespace, pe, peer, peerNS)
				}
				if peerOK && portMatches(r.ports, dst, port, proto) {
					return true
				}
			}
		}
		return !governed
	}
	return direction(dst, src, srcNS, networkingv1.PolicyTypeIngress) && direction(src, dst, dstNS, networkingv1.PolicyTypeEgress)
}

// nodeIPs are addresses of ingest nodes in each overlay's kind of cluster: a kind node for dev,
// a node of a 10.0.0.0/8 network for production.
var nodeIPs = map[string]string{"dev": "172.18.0.3", "production": "10.0.3.4"}

// podOf returns an endpoint for a workload's pods, with a pod IP outside every private range
// (so only selectors, not ipBlocks, can admit it).
func podOf(w workload) endpoint {
	return endpoint{Namespace: w.Namespace, Labels: w.Template.Labels, IP: "100.64.1.5", W: &w}
}

func TestNetworkPoliciesAdmitWhatMustPassAndNothingElse(t *testing.T) {
	each(t, func(t *testing.T, b *built) {
		var nats, router, worker, ingest workload
		for _, w := range b.workloads() {
			switch w.Name {
			case "nats":
				nats = w
			case "router":
				router = w
			case "worker":
				worker = w
			case "ingest":
				ingest = w
			}
		}
		if !ingest.Template.Spec.HostNetwork {
			t.Fatal("ingest is expected to run with hostNetwork (its traffic comes from node addresses)")
		}
		n := natsServer(t, b)
		client, cluster := int32(n.Opts.Port), int32(n.Opts.Cluster.Port)
		monitoring := endpoint{Namespace: "monitoring", Labels: map[string]string{"app.kubernetes.io/name": "prometheus"}, IP: "100.64.9.9"}
		monNS := map[string]string{"callrouter.io/monitoring": "true"}
		stranger := endpoint{Namespace: "default", Labels: map[string]string{"app": "other"}, IP: "100.64.7.7"}
		node := endpoint{IP: nodeIPs[b.overlay]}
		dns := endpoint{Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}, IP: "100.64.0.10"}
		internet := endpoint{IP: "203.0.113.10"}
		ns := func(e endpoint, extra map[string]string) map[string]string {
			if e.Labels == nil {
				return nil
			}
			return b.nsLabels(e.Namespace, extra)
		}
		type flow struct {
			what     string
			src, dst endpoint
			srcNS    map[string]string
			port     int32
			proto    corev1.Protocol
			want     bool
		}
		flows := []flow{
			{"router → NATS", podOf(router), podOf(nats), nil, client, corev1.ProtocolTCP, true},
			{"worker → NATS", podOf(worker), podOf(nats), nil, client, corev1.ProtocolTCP, true},
			{"ingest (node address) → NATS", node, podOf(nats), nil, client, corev1.ProtocolTCP, true},
			{"NATS → NATS routes", podOf(nats), podOf(nats), nil, cluster, corev1.ProtocolTCP, true},
			{"worker → DNS (UDP)", podOf(worker), dns, nil, 53, corev1.ProtocolUDP, true},
			{"router → DNS (TCP)", podOf(router), dns, nil, 53, corev1.ProtocolTCP, true},
			{"a pod elsewhere → NATS", stranger, podOf(nats), nil, client, corev1.ProtocolTCP, false},
			{"a pod elsewhere → NATS routes", stranger, podOf(nats), nil, cluster, corev1.ProtocolTCP, false},
			{"a pod elsewhere → router", stranger, podOf(router), nil, 8081, corev1.ProtocolTCP, false},
			{"router → worker", podOf(router), podOf(worker), nil, 8082, corev1.ProtocolTCP, false},
			{"worker → the internet", podOf(worker), internet, nil, 443, corev1.ProtocolTCP, false},
			{"Prometheus → NATS clients port", monitoring, podOf(nats), monNS, client, corev1.ProtocolTCP, false},
		}
		// Prometheus reaches every port the pods ask it to scrape (hostNetwork ingest is outside
		// NetworkPolicy: the nodes' firewall guards it).
		for _, w := range []workload{nats, router, worker} {
			p, err := strconv.Atoi(w.Template.Annotations["prometheus.io/port"])
			if err != nil {
				t.Fatalf("%s: prometheus.io/port %q", w.Name, w.Template.Annotations["prometheus.io/port"])
			}
			flows = append(flows, flow{"Prometheus → " + w.Name + " metrics", monitoring, podOf(w), monNS, int32(p), corev1.ProtocolTCP, true})
		}
		for _, f := range flows {
			if got := b.allowed(f.src, f.dst, ns(f.src, f.srcNS), ns(f.dst, nil), f.port, f.proto); got != f.want {
				t.Errorf("%s (port %d/%s): allowed %v, want %v", f.what, f.port, f.proto, got, f.want)
			}
		}
	})
}

// The evaluator is not vacuous: with no policies everything passes, and a deny-all denies.
func TestNetworkPolicyEvaluator(t *testing.T) {
	a := endpoint{Namespace: "x", Labels: map[string]string{"a": "1"}, IP: "100.64.0.1"}
	c := endpoint{Namespace: "x", Labels: map[string]string{"c": "1"}, IP: "100.64.0.2"}
	empty := &built{}
	if !empty.allowed(a, c, empty.nsLabels("x", nil), empty.nsLabels("x", nil), 80, corev1.ProtocolTCP) {
		t.Error("no policies, yet denied")
	}
	deny := &built{objects: []object{{Kind: "NetworkPolicy", Namespace: "x", Name: "d", Obj: &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: "x"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}}}}
	if deny.allowed(a, c, deny.nsLabels("x", nil), deny.nsLabels("x", nil), 80, corev1.ProtocolTCP) {
		t.Error("deny-all ingress, yet allowed")
	}
}
