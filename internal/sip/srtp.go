package sip

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"github.com/pion/srtp/v3"
)

// SRTP policies (Config.SRTP) for SIP media keyed with SDES (RFC 4568).
const (
	SRTPOff      = "off"      // RTP/SAVP offers are refused: plain RTP only
	SRTPOptional = "optional" // RTP/SAVP with a usable a=crypto is answered with SRTP, RTP/AVP with RTP
	SRTPRequired = "required" // only RTP/SAVP with a usable a=crypto; RTP/AVP offers get 488
)

// srtpReplayWindow is the replay-protection window in packets: wider than the cutter's reorder
// window, so that no late packet the cutter would still take is refused as a replay.
const srtpReplayWindow = 256

// sdesSuites are the crypto suites callrouter accepts (RFC 4568 section 6.2, RFC 6188 for
// AES-256, RFC 7714 section 12 for AEAD-GCM), by their SDP name.
var sdesSuites = map[string]srtp.ProtectionProfile{
	"AES_CM_128_HMAC_SHA1_80": srtp.ProtectionProfileAes128CmHmacSha1_80,
	"AES_CM_128_HMAC_SHA1_32": srtp.ProtectionProfileAes128CmHmacSha1_32,
	"AES_256_CM_HMAC_SHA1_80": srtp.ProtectionProfileAes256CmHmacSha1_80,
	"AES_256_CM_HMAC_SHA1_32": srtp.ProtectionProfileAes256CmHmacSha1_32,
	"AEAD_AES_128_GCM":        srtp.ProtectionProfileAeadAes128Gcm,
	"AEAD_AES_256_GCM":        srtp.ProtectionProfileAeadAes256Gcm,
}

// sdesKey is one accepted a=crypto line of an offer: the key the offerer encrypts its RTP with.
type sdesKey struct {
	tag     string
	suite   string
	profile srtp.ProtectionProfile
	key     []byte
	salt    []byte
}

var errCrypto = errors.New("sip: unusable a=crypto line")

// parseCrypto reads one a=crypto value: "<tag> <suite> inline:<base64 key||salt>[|lifetime]"
// (RFC 4568 section 9.1). Lines with a master key identifier, several keys or session
// parameters are not used (callrouter supports none of them); neither are unknown suites.
func parseCrypto(v string) (sdesKey, error) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return sdesKey{}, errCrypto
	}
	if n, err := strconv.Atoi(f[0]); err != nil || n < 0 || n > 999999999 {
		return sdesKey{}, errCrypto
	}
	profile, ok := sdesSuites[f[1]]
	if !ok {
		return sdesKey{}, errCrypto
	}
	inline, ok := strings.CutPrefix(f[2], "inline:")
	if !ok || strings.Contains(inline, ";") {
		return sdesKey{}, errCrypto
	}
	parts := strings.Split(inline, "|")
	if len(parts) > 2 || (len(parts) == 2 && strings.Contains(parts[1], ":")) { // a lifetime is fine; an MKI is not
		return sdesKey{}, errCrypto
	}
	raw, err := base64.StdEncoding.DecodeString(parts[0])
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(parts[0]); err != nil {
			return sdesKey{}, errCrypto
		}
	}
	kl, _ := profile.KeyLen()
	sl, _ := profile.SaltLen()
	if len(raw) != kl+sl {
		return sdesKey{}, errCrypto
	}
	return sdesKey{tag: f[0], suite: f[1], profile: profile, key: raw[:kl], salt: raw[kl:]}, nil
}

// pickCrypto returns the first usable a=crypto line of an offer (the offerer's preference,
// RFC 4568 section 7.1.2).
func pickCrypto(lines []string) (sdesKey, bool) {
	for _, l := range lines {
		if k, err := parseCrypto(l); err == nil {
			return k, true
		}
	}
	return sdesKey{}, false
}

// answerCrypto returns the a=crypto value of an answer to k: the same tag and suite with a fresh
// key of callrouter's own (RFC 4568 section 7.1.2: each direction has its own key; callrouter
// sends no media with it, but a compliant answer carries one).
func answerCrypto(k sdesKey) (string, error) {
	kl, _ := k.profile.KeyLen()
	sl, _ := k.profile.SaltLen()
	own := make([]byte, kl+sl)
	if _, err := rand.Read(own); err != nil {
		return "", err
	}
	return k.tag + " " + k.suite + " inline:" + base64.StdEncoding.EncodeToString(own), nil
}

// newSRTPContext returns the decryption context of the offerer's key.
func newSRTPContext(k sdesKey) (*srtp.Context, error) {
	return srtp.CreateContext(k.key, k.salt, k.profile, srtp.SRTPReplayProtection(srtpReplayWindow))
}
