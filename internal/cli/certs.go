package cli

import (
	"crypto/x509"
	"encoding/pem"
	"os"

	"github.com/callrouter/callrouter/internal/bus"
	"github.com/prometheus/client_golang/prometheus"
)

var certExpiryDesc = prometheus.NewDesc("callrouter_tls_cert_expiry_timestamp_seconds",
	"When the TLS certificate in a configured file expires (Unix seconds; the earliest of the file's certificates), read on each scrape so a rotated file shows at once. cert: nats_client, nats_ca.",
	[]string{"cert"}, nil)

// certExpiry reports the expiry of the certificate files a binary is configured with; a file
// that is not set reports nothing, one that does not parse reports nothing either (the binary
// itself fails to connect with it, which other alerts catch).
type certExpiry struct{ files map[string]string } // label → path

// RegisterMetrics registers the NATS connection's client statistics (bus.RegisterMetrics) and
// the expiry of its TLS certificate files with reg.
func RegisterMetrics(reg prometheus.Registerer, nc bus.Conn, cfg bus.Config) error {
	if err := bus.RegisterMetrics(reg, nc); err != nil {
		return err
	}
	files := map[string]string{}
	if cfg.TLSCert != "" {
		files["nats_client"] = cfg.TLSCert
	}
	if cfg.TLSCA != "" {
		files["nats_ca"] = cfg.TLSCA
	}
	return reg.Register(certExpiry{files})
}

func (certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- certExpiryDesc }

func (c certExpiry) Collect(ch chan<- prometheus.Metric) {
	for label, path := range c.files {
		if t, ok := earliestExpiry(path); ok {
			ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue, float64(t), label)
		}
	}
}

// earliestExpiry returns the earliest NotAfter (Unix seconds) of the PEM certificates in path.
func earliestExpiry(path string) (int64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	var earliest int64
	found := false
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			continue
		}
		if t := cert.NotAfter.Unix(); !found || t < earliest {
			earliest, found = t, true
		}
	}
	return earliest, found
}
