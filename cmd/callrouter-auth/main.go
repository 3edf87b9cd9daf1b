// Command callrouter-auth generates callrouter's NATS identities and development TLS files.
//
//	callrouter-auth keys -spec identities.conf -out secrets/nats
//	    one nkey seed per identity (<name>.nk, 0600; existing ones are kept) and auth.conf, the
//	    nats.conf authorization block (public keys and permissions), from the identities file
//	    (see internal/natsauth and docs/security.md)
//	callrouter-auth tls -out secrets/nats-tls -hosts nats,nats-0.nats-headless,...
//	    a development CA with a server (client + route connections) and a client certificate,
//	    offline; production uses its own PKI
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/callrouter/callrouter/internal/natsauth"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `usage:
  callrouter-auth keys -spec <identities file> -out <dir> [-conf <file>]
  callrouter-auth tls -out <dir> [-hosts <name,...>] [-valid <duration>]
`

func run(args []string, out, errOut io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(errOut, usage)
		return 2
	}
	switch args[0] {
	case "keys":
		return keys(args[1:], out, errOut)
	case "tls":
		return devTLS(args[1:], out, errOut)
	}
	fmt.Fprintf(errOut, "callrouter-auth: unknown command %q\n%s", args[0], usage)
	return 2
}

func keys(args []string, out, errOut io.Writer) int {
	fs := flag.NewFlagSet("keys", flag.ContinueOnError)
	fs.SetOutput(errOut)
	spec := fs.String("spec", "", "identities file: tenants, pools, nodes (one statement a line)")
	dir := fs.String("out", "", "directory for the seed files (<name>.nk); existing seeds are kept")
	conf := fs.String("conf", "", "where to write the nats.conf authorization block (default <out>/auth.conf)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *spec == "" || *dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(errOut, "callrouter-auth keys: flags -spec and -out are required")
		return 2
	}
	if *conf == "" {
		*conf = filepath.Join(*dir, "auth.conf")
	}
	s, err := natsauth.ParseFile(*spec)
	if err != nil {
		fmt.Fprintf(errOut, "callrouter-auth: flag -spec: %v\n", err)
		return 2
	}
	ids := s.Identities()
	k, created, err := natsauth.LoadOrCreate(*dir, ids)
	if err != nil {
		fmt.Fprintf(errOut, "callrouter-auth: flag -out: %v\n", err)
		return 1
	}
	block, err := natsauth.Conf(ids, k)
	if err == nil {
		err = os.WriteFile(*conf, block, 0o644)
	}
	if err != nil {
		fmt.Fprintf(errOut, "callrouter-auth: flag -conf: %v\n", err)
		return 1
	}
	for _, id := range ids {
		state := "kept"
		for _, c := range created {
			if c == id.Name {
				state = "created"
			}
		}
		fmt.Fprintf(out, "%-8s %-28s %s\n", state, id.Name, natsauth.KeyFile(*dir, id.Name))
	}
	fmt.Fprintf(out, "wrote %s (%d users)\n", *conf, len(ids))
	return 0
}

func devTLS(args []string, out, errOut io.Writer) int {
	fs := flag.NewFlagSet("tls", flag.ContinueOnError)
	fs.SetOutput(errOut)
	dir := fs.String("out", "", "directory for ca.crt, server.crt/key and client.crt/key")
	hosts := fs.String("hosts", "nats,nats.nats,nats.nats.svc,nats.nats.svc.cluster.local,nats-headless,*.nats-headless,*.nats-headless.nats.svc,*.nats-headless.nats.svc.cluster.local",
		"comma-separated DNS names and IP addresses of the NATS servers (localhost and 127.0.0.1 are always added)")
	valid := fs.Duration("valid", 365*24*time.Hour, "how long the certificates are valid")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(errOut, "callrouter-auth tls: flag -out is required")
		return 2
	}
	if *valid <= 0 {
		fmt.Fprintln(errOut, "callrouter-auth tls: flag -valid must be positive")
		return 2
	}
	var hs []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	if err := natsauth.WriteDevTLS(*dir, hs, *valid); err != nil {
		fmt.Fprintf(errOut, "callrouter-auth: flag -out: %v\n", err)
		return 1
	}
	fmt.Fprintf(out, "wrote %s: %s, %s, %s, %s, %s (development only)\n", *dir, natsauth.CAFile,
		natsauth.ServerCertFile, natsauth.ServerKeyFile, natsauth.ClientCertFile, natsauth.ClientKeyFile)
	return 0
}
