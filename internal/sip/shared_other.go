//go:build !linux

package sip

import (
	"errors"
	"net/netip"
)

// sharedSocks has no sockets outside Linux: the shared port reads with recvmmsg.
type sharedSocks struct{}

const sharedRcvBuf = 0

func openSharedRTP(netip.Addr, int, int, *metrics) (*sharedRTP, error) {
	return nil, errors.New("sip: -sip-rtp-shared needs Linux")
}

func (r *sharedRTP) close() {}
