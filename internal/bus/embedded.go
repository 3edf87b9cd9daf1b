package bus

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded runs a nats-server inside the process.
type Embedded struct {
	*server.Server
}

// EmbeddedOptions configures an embedded server.
type EmbeddedOptions struct {
	Host        string // default 127.0.0.1
	Port        int    // -1 picks a free port
	HTTPPort    int    // monitoring port; 0 disables, -1 picks a free port
	ClusterName string
	ClusterPort int      // 0 disables clustering, -1 picks a free port
	Routes      []string // nats-route://host:port URLs of other nodes
	ServerName  string
	// Users, when set, turns authorization on: a client must sign in with one of these nkeys and
	// gets its permissions (natsauth.Users builds them from the identities file).
	Users []*server.NkeyUser
	// TLS for client connections: a certificate and key (both or neither); with a CA the server
	// also requires and verifies client certificates.
	TLSCert, TLSKey, TLSCA string
}

// StartEmbedded starts a server and waits until it accepts clients.
func StartEmbedded(o EmbeddedOptions) (*Embedded, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	opts := &server.Options{
		ServerName:            o.ServerName,
		Host:                  o.Host,
		Port:                  o.Port,
		NoLog:                 true,
		NoSigs:                true,
		MaxPayload:            4 << 20,
		MaxPending:            256 << 20,
		WriteDeadline:         10 * time.Second,
		DisableShortFirstPing: true,
	}
	if len(o.Users) > 0 {
		opts.Nkeys = o.Users
	}
	if o.TLSCert != "" || o.TLSKey != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: o.TLSCert, KeyFile: o.TLSKey, CaFile: o.TLSCA, Verify: o.TLSCA != ""})
		if err != nil {
			return nil, fmt.Errorf("bus: embedded server TLS: %w", err)
		}
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = tc, true, o.TLSCA != "", 2
	}
	if o.HTTPPort != 0 {
		opts.HTTPHost = o.Host
		opts.HTTPPort = o.HTTPPort
	}
	if o.ClusterPort != 0 {
		opts.Cluster.Name = o.ClusterName
		opts.Cluster.Host = o.Host
		opts.Cluster.Port = o.ClusterPort
		opts.Routes = server.RoutesFromStr(strings.Join(o.Routes, ","))
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("bus: embedded server did not start in 10s")
	}
	return &Embedded{s}, nil
}

// URL returns the client URL.
func (e *Embedded) URL() string { return e.ClientURL() }

// RouteURL returns the nats-route URL other nodes use to join this one.
func (e *Embedded) RouteURL() string {
	a := e.ClusterAddr()
	return fmt.Sprintf("nats-route://%s:%d", a.IP, a.Port)
}

// Subscriptions returns the server's own count of subscriptions.
func (e *Embedded) Subscriptions() uint32 { return e.NumSubscriptions() }

// Close shuts the server down and waits for it.
func (e *Embedded) Close() {
	e.Shutdown()
	e.WaitForShutdown()
}
