package natsauth

import (
	"sort"

	"github.com/callrouter/callrouter/internal/subjects"
)

// Role names.
const (
	RoleIngest = "ingest"
	RoleRouter = "router"
	RoleWorker = "worker"
	RoleTenant = "tenant"
	RoleAdmin  = "admin"
)

// Identity is one NATS user: who it is and the subjects it may publish and subscribe. Everything
// not listed is denied by the server.
type Identity struct {
	Name   string // user name and key file stem: "ingest", "ingest-ingest-1", "worker-pci", "tenant-acme", …
	Role   string
	Node   string // the node id for a per-node identity; "" for one shared by the role
	Pool   string // workers
	Tenant string // tenant consumers
	// Tenants confines a worker of a dedicated pool to these tenants (nil: every tenant).
	Tenants   []string
	Pub, Sub  []string
	Responses bool // may answer requests (allow_responses: one reply per request)
}

// Identities returns every identity of the spec with its permissions, in a stable order.
func (s *Spec) Identities() []Identity {
	var out []Identity
	node := func(role string, n *Nodes, each func(name, id string)) {
		if n == nil {
			return
		}
		if n.Shared {
			each(role, "")
			return
		}
		for _, id := range n.IDs {
			each(role+"-"+id, id)
		}
	}
	node(RoleIngest, s.Ingest, func(name, id string) { out = append(out, ingestIdentity(name, id)) })
	node(RoleRouter, s.Router, func(name, id string) { out = append(out, routerIdentity(name, id)) })
	pools := make([]string, 0, len(s.Workers))
	for p := range s.Workers {
		pools = append(pools, p)
	}
	sort.Strings(pools)
	for _, pool := range pools {
		n := s.Workers[pool]
		var tenants []string
		if p := s.Pool(pool); p != nil {
			tenants = p.Tenants
		}
		node(RoleWorker+"-"+pool, &n, func(name, id string) { out = append(out, workerIdentity(name, id, pool, tenants)) })
	}
	for _, t := range s.Tenants {
		out = append(out, tenantIdentity(t))
	}
	for _, a := range s.Admins {
		out = append(out, adminIdentity(a))
	}
	return out
}

// star is the node's own token, or "*" for an identity shared by every node of the role.
func star(id string) string {
	if id == "" {
		return "*"
	}
	return id
}

func ingestIdentity(name, id string) Identity {
	me := star(id)
	return Identity{Name: name, Role: RoleIngest, Node: id, Responses: true, // replay, migrate, pause
		Pub: []string{
			subjects.AllAudio,                                    // every tenant's calls land on ingest
			subjects.ClassEvents + ".>",                          // start, replaced, end
			subjects.Heartbeat(subjects.Ingest, me),              // its own heartbeat
			subjects.HeartbeatCalls(subjects.Ingest, me),         // and its call list
			subjects.Place,                                       // placement requests
			subjects.WorkerVerb("*", subjects.WorkerVerbRelease), // a call that ended while placing
		},
		Sub: []string{
			subjects.IngestVerb(me, "*"),            // replay, place (migrate), pause
			subjects.Bcast(subjects.TopicDown),      // worker deaths
			subjects.Heartbeat(subjects.Ingest, me), // its own heartbeat: liveness
			subjects.ClassEvents + ".>",             // the call page's event streams (internal/whip)
		},
	}
}

func routerIdentity(name, id string) Identity {
	me := star(id)
	return Identity{Name: name, Role: RoleRouter, Node: id, Responses: true, // place, admin API
		Pub: []string{
			subjects.Heartbeat(subjects.Router, me),
			subjects.Bcast(subjects.TopicDown),
			subjects.WorkerVerb("*", subjects.WorkerVerbOffer),
			subjects.WorkerVerb("*", subjects.WorkerVerbRelease),
			subjects.IngestVerb("*", subjects.IngestVerbPlace), // reconciliation notices
			subjects.IngestVerb("*", "pause"),                  // pause requests from the admin API
			subjects.ClassEvents + ".>",                        // placed, refused, reaped
		},
		Sub: append([]string{
			subjects.AllHeartbeats,
			subjects.Place,
			subjects.APIPrefix + ">", // router.api.<verb> and router.api.<tenant>.<verb>
		}, routerEvents()...),
	}
}

// RouterEventKinds are the event kinds a router reads to keep each call's history (the admin
// API's history verb): lifecycle and accounting, never audio-derived events such as dtmf.
var RouterEventKinds = []string{"start", "placed", "refused", "replaced", "reaped", "gap", "accounting", "stopped", "error", "end"}

func routerEvents() []string {
	out := make([]string, len(RouterEventKinds))
	for i, k := range RouterEventKinds {
		out[i] = subjects.ClassEvents + ".*.*." + k
	}
	return out
}

func workerIdentity(name, id, pool string, tenants []string) Identity {
	me := star(id)
	w := Identity{Name: name, Role: RoleWorker, Node: id, Pool: pool, Tenants: tenants, Responses: true, // offer, release, ctl
		Pub: []string{
			subjects.Heartbeat(subjects.Worker, me),
			subjects.HeartbeatCalls(subjects.Worker, me),
			subjects.IngestVerb("*", subjects.IngestVerbReplay),
			subjects.IngestVerb("*", subjects.IngestVerbPlace), // migrations, fencing hand-backs
		},
		Sub: []string{
			subjects.WorkerVerb(me, "*"),
			subjects.Heartbeat(subjects.Worker, me),
		},
	}
	if len(tenants) == 0 { // a shared pool: every tenant
		w.Pub = append(w.Pub, subjects.ClassEvents+".>")
		w.Sub = append(w.Sub, subjects.AllAudio, subjects.ClassCtl+".>")
		return w
	}
	for _, t := range tenants {
		w.Pub = append(w.Pub, subjects.ClassEvents+"."+t+".>")
		w.Sub = append(w.Sub, subjects.ClassAudio+"."+t+".>", subjects.ClassCtl+"."+t+".>")
	}
	return w
}

func tenantIdentity(t Tenant) Identity {
	id := Identity{Name: RoleTenant + "-" + t.Name, Role: RoleTenant, Tenant: t.Name,
		Pub: []string{
			subjects.TenantAPI(t.Name, "*"),         // the admin API, about its own calls only
			subjects.ClassCtl + "." + t.Name + ".>", // control requests to its calls' workers
		},
		Sub: []string{subjects.ClassEvents + "." + t.Name + ".>"},
	}
	if t.Audio {
		id.Sub = append(id.Sub, subjects.ClassAudio+"."+t.Name+".>")
	}
	return id
}

func adminIdentity(name string) Identity {
	return Identity{Name: RoleAdmin + "-" + name, Role: RoleAdmin,
		Pub: []string{
			subjects.APIPrefix + ">",
			subjects.ClassCtl + ".>",
			subjects.IngestVerb("*", "pause"),
			subjects.WorkerVerb("*", "drain"), // callrouterctl drain
		},
		Sub: []string{subjects.ClassEvents + ".>", subjects.AllHeartbeats, subjects.AllBroadcasts},
	}
}
