package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/callrouter/callrouter/internal/bus"
)

// ParseArgs is Parse for a command that takes arguments as well as flags (callrouterctl): flags
// may come before, between or after the arguments ("--" ends the flags), and every flag not
// given on the command line is filled from its environment variable. It returns the arguments.
func ParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("invalid value %q for %s (flag -%s): %v", v, EnvName(f.Name), f.Name, err))
			}
		}
	})
	return pos, errors.Join(errs...)
}

// NATSFlags registers only the NATS connection flags of CommonFlags (same names, so the same
// environment variables), for a client that serves no HTTP: callrouterctl.
func NATSFlags(fs *flag.FlagSet) *bus.Config {
	c := bus.DefaultConfig()
	fs.StringVar(&c.URL, "nats", c.URL, "NATS server URLs, comma-separated")
	fs.StringVar(&c.CredsFile, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&c.TLSCert, "nats-tls-cert", "", "client TLS certificate file")
	fs.StringVar(&c.TLSKey, "nats-tls-key", "", "client TLS key file")
	fs.StringVar(&c.TLSCA, "nats-tls-ca", "", "CA file for the NATS servers")
	return &c
}

// NATSCredentialFlags registers CommonFlags' NATS credential and TLS flags (-nats-creds,
// -nats-nkey, -nats-tls-cert, -nats-tls-key, -nats-tls-ca), filling c, for a client with a -nats
// flag of its own (the load tester). CheckNATS validates what they hold.
func NATSCredentialFlags(fs *flag.FlagSet, c *bus.Config) {
	fs.StringVar(&c.CredsFile, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&c.NkeyFile, "nats-nkey", "", "NATS nkey seed file of this component's identity (callrouter-auth keys)")
	fs.StringVar(&c.TLSCert, "nats-tls-cert", "", "client TLS certificate file")
	fs.StringVar(&c.TLSKey, "nats-tls-key", "", "client TLS key file")
	fs.StringVar(&c.TLSCA, "nats-tls-ca", "", "CA file for the NATS servers")
}
