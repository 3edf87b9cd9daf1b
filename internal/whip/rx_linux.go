package whip

import (
	"time"

	"github.com/callrouter/callrouter/internal/mmsg"
	"github.com/pion/stun/v4"
)

// The read loop takes the shared socket's datagrams in batches, as the SIP ingest's shared RTP
// port does (internal/sip/shared_linux.go): once woken by Go's network poller it takes up to
// readBatch queued datagrams per recvmmsg until the socket is empty, and when a batch was not
// full it sleeps Config.ReadCoalesce before looking again, so that a busy socket costs one
// wake-up per ReadCoalesce instead of one per packet (and ingest's NATS flusher is kicked once
// per batch). Idle, it waits in the poller. A packet waits at most ReadCoalesce more.
const readBatch = 64

// readLoop reads the shared socket until it is closed.
func (s *Server) readLoop() {
	defer close(s.readDone)
	rc, err := s.udp.SyscallConn()
	if err != nil {
		return
	}
	batch := mmsg.New(readBatch, 1500)
	var m stun.Message
	got := 0
	// recv takes one batch; false (the socket is empty) parks the loop in the poller.
	recv := func(fd uintptr) bool {
		n, more := batch.Recv(fd)
		if !more {
			return false
		}
		got = n
		for k := range n {
			if p, from, ok := batch.Datagram(k); ok {
				s.datagram(p, from, &m)
			}
		}
		return true
	}
	for {
		if rc.Read(recv) != nil {
			return // closed
		}
		if got < readBatch && s.cfg.ReadCoalesce > 0 {
			time.Sleep(s.cfg.ReadCoalesce)
		}
		got = 0
	}
}
