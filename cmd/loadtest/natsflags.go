package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/callrouter/callrouter/internal/cli"
	"github.com/nats-io/nats.go"
)

// natsAuth holds the NATS credential and TLS flags, the ones every callrouter binary takes
// (cli.NATSCredentialFlags), for a remote -nats that requires them.
type natsAuth struct {
	cfg bus.Config
}

func natsAuthFlags(fs *flag.FlagSet) *natsAuth {
	a := &natsAuth{}
	cli.NATSCredentialFlags(fs, &a.cfg)
	return a
}

// given reports whether any of the flags is set.
func (a *natsAuth) given() bool {
	c := a.cfg
	return c.CredsFile != "" || c.NkeyFile != "" || c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != ""
}

// check validates the flags against the run's -nats URL, naming the flag at fault: they are for
// a remote NATS only (an in-process stack makes its own; see -secure), and cli.CheckNATS holds
// them to what the services accept.
func (a *natsAuth) check(natsURL string) error {
	if !a.given() {
		return nil
	}
	if natsURL == "" {
		return errors.New("flags -nats-creds, -nats-nkey and -nats-tls-*: they sign in to a remote NATS and need -nats (an in-process stack makes its own credentials; see -secure)")
	}
	c := a.cfg
	c.URL, c.ReconnectBuf = natsURL, bus.DefaultConfig().ReconnectBuf
	return cli.CheckNATS(c)
}

// options returns what the tester's own connections add to sign in and verify the servers.
func (a *natsAuth) options() ([]nats.Option, error) {
	opts, err := a.cfg.AuthOptions()
	if err != nil {
		return nil, fmt.Errorf("flag -nats-nkey: %w", err)
	}
	return opts, nil
}

// explain adds to a failed connection the flags that would have signed it in.
func explain(err error) error {
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return fmt.Errorf("%w (the NATS server wants credentials: give -nats-nkey or -nats-creds, as for the other callrouter binaries)", err)
	case errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("%w (the NATS server wants TLS: give -nats-tls-ca, and -nats-tls-cert and -nats-tls-key if it verifies clients)", err)
	}
	return err
}
