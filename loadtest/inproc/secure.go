package inproc

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/natsauth"
	"github.com/callrouter/callrouter/internal/stack"
	"github.com/callrouter/callrouter/internal/subjects"
	"github.com/callrouter/callrouter/loadtest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// testerIdentity is the load tester's own NATS identity on a secure stack: the baseline's
// subjects both ways, and the events it reads. It may touch nothing of callrouter's control plane.
const testerIdentity = "loadtest"

// secure makes cfg a stack as in production (docs/security.md): the embedded server requires TLS
// with a development CA made for the run, and every component signs in as its role's
// least-privilege identity. It returns the tester's connection options and a cleanup.
func secure(cfg *stack.Config, pool, tenant string) ([]nats.Option, func(), error) {
	dir, err := os.MkdirTemp("", "callrouter-loadtest-tls-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	if err := natsauth.WriteDevTLS(dir, nil, time.Hour); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("loadtest: secure stack: %w", err)
	}
	set, err := natsauth.NewSet(natsauth.Local([]string{pool}, tenant))
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("loadtest: secure stack: %w", err)
	}
	tester := natsauth.Identity{Name: testerIdentity, Role: testerIdentity,
		Pub: []string{loadtest.RawPrefix + ".>"},
		Sub: []string{loadtest.RawPrefix + ".>", subjects.ClassEvents + "." + tenant + ".>"}}
	keys, err := natsauth.NewKeys([]natsauth.Identity{tester})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	set.IDs = append(set.IDs, tester)
	set.Keys[testerIdentity] = keys[testerIdentity]
	kp, err := nkeys.FromSeed(keys[testerIdentity])
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	ca := filepath.Join(dir, natsauth.CAFile)
	cfg.Auth = set
	cfg.TLSCA = ca
	cfg.Embedded = bus.EmbeddedOptions{Port: -1, TLSCert: filepath.Join(dir, natsauth.ServerCertFile), TLSKey: filepath.Join(dir, natsauth.ServerKeyFile)}
	return []nats.Option{nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(bus.InboxPrefix(pub)), nats.RootCAs(ca)}, cleanup, nil
}
