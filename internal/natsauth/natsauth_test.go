package natsauth

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

const testSpec = `
# tenants
tenant acme audio
tenant globex
pool default shared
pool pci acme
ingest ingest-1
router
worker default w-1 w-2
worker pci
admin ops
`

func parse(t testing.TB, text string) *Spec {
	t.Helper()
	s, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseNamesEveryIdentity(t *testing.T) {
	var names []string
	for _, id := range parse(t, testSpec).Identities() {
		names = append(names, id.Name)
	}
	want := []string{"ingest-ingest-1", "router", "worker-default-w-1", "worker-default-w-2", "worker-pci", "tenant-acme", "tenant-globex", "admin-ops"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("identities %v, want %v", names, want)
	}
}

func TestParseRejects(t *testing.T) {
	for _, text := range []string{
		"tenant",
		"tenant acme video",
		"tenant a.b",
		"tenant acme\ntenant acme",
		"pool pci",
		"pool pci acme", // no tenant line
		"worker gpu w-1",
		"pool p shared\nworker p\nworker p",
		"ingest\ningest i-1",
		"frobnicate x",
		"admin",
	} {
		if _, err := Parse(strings.NewReader(text)); !errors.Is(err, ErrSpec) {
			t.Errorf("Parse(%q) = %v, want ErrSpec", text, err)
		}
	}
}

// TestConfMatchesEmbeddedUsers: what nats-server parses from the generated authorization block is
// what the embedded server is given, so the one-process mode, the e2e tests and Kubernetes run
// one set of permissions.
func TestConfMatchesEmbeddedUsers(t *testing.T) {
	set, err := NewSet(parse(t, testSpec))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := Conf(set.IDs, set.Keys)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, append([]byte("port: -1\n"), conf...), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects the generated block: %v\n%s", err, conf)
	}
	users, err := set.Users()
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Nkeys) != len(users) {
		t.Fatalf("conf has %d users, embedded %d", len(opts.Nkeys), len(users))
	}
	for i, u := range users {
		got := opts.Nkeys[i]
		if got.Nkey != u.Nkey || !reflect.DeepEqual(got.Permissions, u.Permissions) {
			t.Errorf("user %s: conf %+v, embedded %+v", set.IDs[i].Name, got.Permissions, u.Permissions)
		}
	}
}

func TestLoadOrCreateKeepsExistingKeys(t *testing.T) {
	dir := t.TempDir()
	first := parse(t, "tenant acme\nadmin ops").Identities()
	k1, created, err := LoadOrCreate(dir, first)
	if err != nil || len(created) != 2 {
		t.Fatalf("created %v, %v", created, err)
	}
	second := parse(t, "tenant acme\ntenant globex\nadmin ops").Identities()
	k2, created, err := LoadOrCreate(dir, second)
	if err != nil || !reflect.DeepEqual(created, []string{"tenant-globex"}) {
		t.Fatalf("adding a tenant created %v, %v; want only tenant-globex", created, err)
	}
	for name, seed := range k1 {
		if string(k2[name]) != string(seed) {
			t.Errorf("%s's key changed", name)
		}
	}
	fi, err := os.Stat(KeyFile(dir, "tenant-globex"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("seed file mode %v, %v; want 0600", fi.Mode(), err)
	}
}

// client is one identity's connection, with the permission violations the server reported.
type client struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []string
}

func (c *client) violated(what, subject string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.errs {
		if strings.Contains(strings.ToLower(e), "permissions violation for "+what+" to \""+strings.ToLower(subject)+"\"") {
			return true
		}
	}
	return false
}

func connectAs(t *testing.T, url string, seed []byte) *client {
	t.Helper()
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	c := &client{}
	c.nc, err = nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(bus.InboxPrefix(pub)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			c.errs = append(c.errs, err.Error())
			c.mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.nc.Close)
	return c
}

// TestPermissions is nats-server's authorization table for callrouter's roles: for each
// identity, subject and direction, whether the server lets it through. A publish is allowed when
// an observer with every right receives it, denied when the server reports a permissions
// violation; a subscription likewise.
func TestPermissions(t *testing.T) {
	spec := parse(t, testSpec)
	set, err := NewSet(spec)
	if err != nil {
		t.Fatal(err)
	}
	users, err := set.Users()
	if err != nil {
		t.Fatal(err)
	}
	root, _ := nkeys.CreateUser()
	rootPub, _ := root.PublicKey()
	rootSeed, _ := root.Seed()
	users = append(users, &server.NkeyUser{Nkey: rootPub}) // no permissions: everything
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, Users: users})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	observer := connectAs(t, srv.URL(), rootSeed)

	const pub, sub = "pub", "sub"
	type row struct {
		who, dir, subject string
		allowed           bool
	}
	table := []row{
		// ingest
		{"ingest-ingest-1", pub, "audio.acme.c1.caller", true},
		{"ingest-ingest-1", pub, "events.acme.c1.start", true},
		{"ingest-ingest-1", pub, "hb.ingest.ingest-1", true},
		{"ingest-ingest-1", pub, "hb.ingest.ingest-2", false},
		{"ingest-ingest-1", pub, "hb.ingest.ingest-1.calls", true},
		{"ingest-ingest-1", pub, "hb.ingest.ingest-2.calls", false},
		{"ingest-ingest-1", pub, "hb.worker.w-1", false},
		{"ingest-ingest-1", pub, "router.place", true},
		{"ingest-ingest-1", pub, "worker.w-1.release", true},
		{"ingest-ingest-1", pub, "worker.w-1.offer", false},
		{"ingest-ingest-1", pub, "bcast.down", false},
		{"ingest-ingest-1", sub, "ingest.ingest-1.replay", true},
		{"ingest-ingest-1", sub, "ingest.ingest-2.replay", false},
		{"ingest-ingest-1", sub, "bcast.down", true},
		{"ingest-ingest-1", sub, "audio.acme.c1.*", false},
		{"ingest-ingest-1", sub, "events.acme.c1.>", true}, // the call page's event streams
		{"ingest-ingest-1", sub, "events.>", true},
		// router (shared by every replica)
		{"router", pub, "bcast.down", true},
		{"router", pub, "worker.w-1.offer", true},
		{"router", pub, "worker.w-1.release", true},
		{"router", pub, "ingest.ingest-1.place", true},
		{"router", pub, "ingest.ingest-1.pause", true},
		{"router", pub, "ingest.ingest-1.replay", false},
		{"router", pub, "hb.worker.w-1", false},
		{"router", pub, "audio.acme.c1.caller", false},
		{"router", sub, "hb.>", true},
		{"router", sub, "router.place", true},
		{"router", sub, "router.api.>", true},
		{"router", sub, "audio.>", false},
		// a per-node worker of the shared pool
		{"worker-default-w-1", pub, "hb.worker.w-1", true},
		{"worker-default-w-1", pub, "hb.worker.fake-1", false},
		{"worker-default-w-1", pub, "hb.worker.w-1.calls", true},
		{"worker-default-w-1", pub, "hb.worker.fake-1.calls", false},
		{"worker-default-w-1", pub, "hb.ingest.ingest-1.calls", false},
		{"worker-default-w-1", pub, "hb.ingest.ingest-1", false},
		{"worker-default-w-1", pub, "events.globex.c1.dtmf", true},
		{"worker-default-w-1", pub, "ingest.ingest-1.replay", true},
		{"worker-default-w-1", pub, "ingest.ingest-1.place", true},
		{"worker-default-w-1", pub, "worker.w-2.release", false},
		{"worker-default-w-1", pub, "bcast.down", false},
		{"worker-default-w-1", pub, "router.place", false},
		{"worker-default-w-1", pub, "audio.acme.c1.caller", false},
		{"worker-default-w-1", sub, "worker.w-1.offer", true},
		{"worker-default-w-1", sub, "worker.w-2.offer", false},
		{"worker-default-w-1", sub, "audio.globex.c1.*", true},
		{"worker-default-w-1", sub, "ctl.globex.c1", true},
		{"worker-default-w-1", sub, "hb.>", false},
		// the dedicated pool's shared worker identity
		{"worker-pci", pub, "hb.worker.pci-7", true},
		{"worker-pci", pub, "events.acme.c1.dtmf", true},
		{"worker-pci", pub, "events.globex.c1.dtmf", false},
		{"worker-pci", sub, "audio.acme.c1.*", true},
		{"worker-pci", sub, "audio.globex.c1.*", false},
		{"worker-pci", sub, "audio.>", false},
		{"worker-pci", sub, "ctl.globex.c1", false},
		// tenant consumers
		{"tenant-acme", sub, "events.acme.>", true},
		{"tenant-acme", sub, "audio.acme.>", true},
		{"tenant-acme", sub, "events.globex.>", false},
		{"tenant-acme", sub, "events.>", false},
		{"tenant-acme", pub, "router.api.acme.calls", true},
		{"tenant-acme", pub, "router.api.globex.calls", false},
		{"tenant-acme", pub, "router.api.calls", false},
		{"tenant-acme", pub, "ctl.acme.c1", true},
		{"tenant-acme", pub, "ctl.globex.c1", false},
		{"tenant-acme", pub, "audio.acme.c1.caller", false},
		{"tenant-acme", pub, "ingest.ingest-1.replay", false},
		{"tenant-globex", sub, "audio.globex.>", false}, // no audio grant
		{"tenant-globex", sub, "audio.acme.>", false},
		{"tenant-globex", sub, "_INBOX.>", false},
		// operators
		{"admin-ops", pub, "router.api.calls", true},
		{"admin-ops", pub, "router.api.pause", true},
		{"admin-ops", pub, "ingest.ingest-1.pause", true},
		{"admin-ops", pub, "ctl.acme.c1", true},
		{"admin-ops", pub, "bcast.down", false},
		{"admin-ops", pub, "ingest.ingest-1.replay", false},
		{"admin-ops", sub, "events.>", true},
		{"admin-ops", sub, "audio.>", false},
	}
	clients := map[string]*client{}
	for _, r := range table {
		c := clients[r.who]
		if c == nil {
			c = connectAs(t, srv.URL(), set.Keys[r.who])
			clients[r.who] = c
		}
		t.Run(r.who+"/"+r.dir+"/"+r.subject, func(t *testing.T) {
			var got <-chan *nats.Msg
			ch := make(chan *nats.Msg, 1)
			if r.dir == pub {
				s, err := observer.nc.ChanSubscribe(r.subject, ch)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Unsubscribe()
				if err := observer.nc.Flush(); err != nil {
					t.Fatal(err)
				}
				if err := c.nc.Publish(r.subject, []byte("x")); err != nil {
					t.Fatal(err)
				}
				_ = c.nc.Flush()
			} else {
				s, err := c.nc.ChanSubscribe(r.subject, ch)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Unsubscribe()
				_ = c.nc.Flush()
				concrete := strings.NewReplacer("*", "x", ">", "x").Replace(r.subject)
				if err := observer.nc.Publish(concrete, []byte("x")); err != nil {
					t.Fatal(err)
				}
				_ = observer.nc.Flush()
			}
			got = ch
			what := map[string]string{pub: "publish", sub: "subscription"}[r.dir]
			deadline := time.After(10 * time.Second)
			for {
				select {
				case <-got:
					if !r.allowed {
						t.Fatalf("%s may %s %s; want a permissions violation", r.who, r.dir, r.subject)
					}
					return
				case <-deadline:
					t.Fatalf("neither delivered nor refused within 10s")
				case <-time.After(10 * time.Millisecond):
					if c.violated(what, r.subject) {
						if r.allowed {
							t.Fatalf("%s may not %s %s; want it allowed", r.who, r.dir, r.subject)
						}
						return
					}
				}
			}
		})
	}
}

// TestRotationAcceptsBothKeys: while <name>.prev.nk exists, the server accepts the identity's
// old and new keys with the same permissions; once it is removed, only the new one.
func TestRotationAcceptsBothKeys(t *testing.T) {
	dir := t.TempDir()
	ids := parse(t, "tenant acme\n").Identities()
	old, _, err := LoadOrCreate(dir, ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(KeyFile(dir, "tenant-acme"), PrevKeyFile(dir, "tenant-acme")); err != nil {
		t.Fatal(err)
	}
	both, created, err := LoadOrCreate(dir, ids)
	if err != nil || len(created) != 1 {
		t.Fatalf("created %v, %v", created, err)
	}
	users, err := Users(ids, both)
	if err != nil {
		t.Fatal(err)
	}
	oldPub, _ := old.Public("tenant-acme")
	newPub, _ := both.Public("tenant-acme")
	if len(users) != 2 || users[0].Nkey != newPub || users[1].Nkey != oldPub {
		t.Fatalf("users during the rotation: %d; want the new key then the old", len(users))
	}
	for _, u := range users { // a client that took its inbox from the old key, reconnecting with the new
		if !slices.Contains(u.Permissions.Subscribe.Allow, bus.InboxPrefix(oldPub)+".>") || !slices.Contains(u.Permissions.Subscribe.Allow, bus.InboxPrefix(newPub)+".>") {
			t.Fatalf("user %s may subscribe %v; want both keys' inboxes", u.Nkey, u.Permissions.Subscribe.Allow)
		}
	}
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, Users: users})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, seed := range [][]byte{old["tenant-acme"], both["tenant-acme"]} {
		c := connectAs(t, srv.URL(), seed)
		if _, err := c.nc.SubscribeSync("events.acme.>"); err != nil || c.nc.Flush() != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(PrevKeyFile(dir, "tenant-acme")); err != nil {
		t.Fatal(err)
	}
	after, _, err := LoadOrCreate(dir, ids)
	if err != nil {
		t.Fatal(err)
	}
	if users, _ := Users(ids, after); len(users) != 1 || users[0].Nkey != newPub {
		t.Fatalf("after the rotation: %d users; want the new key only", len(users))
	}
}
