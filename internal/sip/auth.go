package sip

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/icholy/digest"
)

// nonceLifetime bounds how long a digest nonce is accepted.
const nonceLifetime = 5 * time.Minute

// digestAuth checks SIP digest credentials (RFC 3261 section 22.4, RFC 2617 with qop=auth and
// MD5). Nonces are stateless: a timestamp and an HMAC of it under a per-process key.
type digestAuth struct {
	realm string
	users map[string]AuthUser
	key   [32]byte
	now   func() time.Time
}

func newDigestAuth(realm string, users map[string]AuthUser) *digestAuth {
	a := &digestAuth{realm: realm, users: users, now: time.Now}
	_, _ = rand.Read(a.key[:])
	return a
}

func (a *digestAuth) nonce() string {
	ts := strconv.FormatInt(a.now().Unix(), 16)
	m := hmac.New(sha256.New, a.key[:])
	m.Write([]byte(ts))
	return ts + "." + hex.EncodeToString(m.Sum(nil)[:16])
}

func (a *digestAuth) nonceOK(n string) bool {
	ts, mac, ok := strings.Cut(n, ".")
	if !ok {
		return false
	}
	m := hmac.New(sha256.New, a.key[:])
	m.Write([]byte(ts))
	if !hmac.Equal([]byte(mac), []byte(hex.EncodeToString(m.Sum(nil)[:16]))) {
		return false
	}
	sec, err := strconv.ParseInt(ts, 16, 64)
	return err == nil && a.now().Sub(time.Unix(sec, 0)) < nonceLifetime
}

// challenge returns the WWW-Authenticate header value.
func (a *digestAuth) challenge(stale bool) string {
	c := digest.Challenge{Realm: a.realm, Nonce: a.nonce(), Algorithm: "MD5", QOP: []string{"auth"}, Stale: stale}
	return c.String()
}

// check verifies an Authorization header value for method. It returns the user, and whether the
// nonce was merely stale (the client should retry with the fresh one).
func (a *digestAuth) check(header, method string) (user string, ok, stale bool) {
	cr, err := digest.ParseCredentials(header)
	if err != nil || cr.Realm != a.realm || (cr.Algorithm != "" && !strings.EqualFold(cr.Algorithm, "MD5")) {
		return "", false, false
	}
	u, known := a.users[cr.Username]
	pass := u.Password
	if !known {
		return "", false, false
	}
	if !a.nonceOK(cr.Nonce) {
		return "", false, true
	}
	ha1 := md5hex(cr.Username + ":" + a.realm + ":" + pass)
	ha2 := md5hex(method + ":" + cr.URI)
	var want string
	switch cr.QOP {
	case "":
		want = md5hex(ha1 + ":" + cr.Nonce + ":" + ha2)
	case "auth":
		want = md5hex(fmt.Sprintf("%s:%s:%08x:%s:%s:%s", ha1, cr.Nonce, cr.Nc, cr.Cnonce, cr.QOP, ha2))
	default:
		return "", false, false
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(cr.Response))) != 1 {
		return "", false, false
	}
	return cr.Username, true, false
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}
