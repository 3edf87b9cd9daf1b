package bus

import (
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// slowConsumerErrors counts the slow-consumer errors the NATS client reported (a subscription's
// pending limit overflowed and the client dropped messages for it), over every connection of the
// process.
var slowConsumerErrors atomic.Uint64

var (
	reconnectsDesc = prometheus.NewDesc("callrouter_nats_reconnects_total", "Times the NATS connection reconnected.", nil, nil)
	connectedDesc  = prometheus.NewDesc("callrouter_nats_connected", "1 while the NATS connection is up.", nil, nil)
	msgsDesc       = prometheus.NewDesc("callrouter_nats_messages_total", "Messages over the NATS connection by direction (in, out).", []string{"direction"}, nil)
	bytesDesc      = prometheus.NewDesc("callrouter_nats_bytes_total", "Payload bytes over the NATS connection by direction (in, out).", []string{"direction"}, nil)
	slowDesc       = prometheus.NewDesc("callrouter_nats_slow_consumer_errors_total",
		"Slow-consumer errors the NATS client reported: a subscription's pending limit overflowed and messages for it were dropped (a worker counts the frames as bus_slow_consumer).", nil, nil)
)

// connMetrics reports one connection's client-side statistics on each scrape.
type connMetrics struct{ nc *nats.Conn }

// RegisterMetrics registers the callrouter_nats_* series of nc with reg.
func RegisterMetrics(reg prometheus.Registerer, nc *nats.Conn) error {
	return reg.Register(connMetrics{nc})
}

func (connMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{reconnectsDesc, connectedDesc, msgsDesc, bytesDesc, slowDesc} {
		ch <- d
	}
}

func (c connMetrics) Collect(ch chan<- prometheus.Metric) {
	s := c.nc.Stats()
	up := 0.0
	if c.nc.IsConnected() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(reconnectsDesc, prometheus.CounterValue, float64(s.Reconnects))
	ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(msgsDesc, prometheus.CounterValue, float64(s.InMsgs), "in")
	ch <- prometheus.MustNewConstMetric(msgsDesc, prometheus.CounterValue, float64(s.OutMsgs), "out")
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.InBytes), "in")
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.OutBytes), "out")
	ch <- prometheus.MustNewConstMetric(slowDesc, prometheus.CounterValue, float64(slowConsumerErrors.Load()))
}
