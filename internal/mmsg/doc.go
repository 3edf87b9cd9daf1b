// Package mmsg takes a UDP socket's queued datagrams in batches with recvmmsg(2), without an
// allocation per datagram: the reader for the SIP ingest's shared RTP port and the WHIP
// endpoint's shared ICE/DTLS/SRTP port. Linux only; elsewhere the callers read one datagram at a
// time. golang.org/x/net's ipv4.PacketConn.ReadBatch does the same system call but allocates a
// net.Addr for every datagram, at 100,000 packets a second the collector's work.
package mmsg
