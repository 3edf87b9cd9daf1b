// Package hostile attacks a real callrouter node from outside, as an attacker or a broken peer
// would: RFC 4475 torture messages, SIP method, header and INVITE floods, RTP floods and
// timestamp jumps, WHIP POST floods, oversized bodies, slowloris HTTP and junk NATS control
// messages. Each attack is a row of a table saying what the node did, what it cost (CPU, memory,
// /metrics series, frames) and what the victim calls on the same node lost (they must lose no
// frame). It holds only tests:
//
//	go test ./hostile -run TestHostile -v -count=1
//
// prints the table; CALLROUTER_HOSTILE_REPORT=<path> also writes it to a markdown file.
package hostile
