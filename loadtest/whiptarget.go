package loadtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrouter/callrouter/internal/frame"
	"github.com/callrouter/callrouter/internal/session"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

// whipCallHeader is the response header in which callrouter's WHIP endpoint names the call.
const whipCallHeader = "X-Callrouter-Call"

// whipTarget plays each call as a WHIP client (RFC 9725) on pion/webrtc: one peer connection and
// one send-only audio track (G.711) per call; WHIP sessions carry one leg.
type whipTarget struct {
	endpoint string
	token    string
	http     *http.Client
	api      *webrtc.API
	ends     sync.WaitGroup
	wait     time.Duration // before each DELETE
	once     sync.Once
	sent     atomic.Int64
}

func newWHIPTarget(endpoint, token string, loopback bool, hangupDelay time.Duration) (*whipTarget, error) {
	var me webrtc.MediaEngine
	for _, c := range []struct {
		mime string
		pt   webrtc.PayloadType
	}{{webrtc.MimeTypePCMU, 0}, {webrtc.MimeTypePCMA, 8}} {
		if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: c.mime, ClockRate: 8000},
			PayloadType: c.pt}, webrtc.RTPCodecTypeAudio); err != nil {
			return nil, err
		}
	}
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if loopback {
		se.SetIncludeLoopbackCandidate(true)
		se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	}
	return &whipTarget{endpoint: endpoint, token: token, wait: hangupDelay, http: &http.Client{Timeout: 15 * time.Second},
		api: webrtc.NewAPI(webrtc.WithMediaEngine(&me), webrtc.WithSettingEngine(se))}, nil
}

func (t *whipTarget) close() {
	t.once.Do(func() {
		t.ends.Wait()
		t.http.CloseIdleConnections()
	})
}

func (t *whipTarget) Start(ctx context.Context, spec session.Spec) (Call, error) {
	mime := webrtc.MimeTypePCMU
	switch spec.Legs[0].Codec {
	case frame.CodecPCMU:
	case frame.CodecPCMA:
		mime = webrtc.MimeTypePCMA
	default:
		return nil, fmt.Errorf("loadtest: WHIP mode sends 8 kHz G.711, not %s", spec.Legs[0].Codec)
	}
	pc, err := t.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	c := &whipCall{t: t, pc: pc}
	c.track, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: mime, ClockRate: 8000}, "audio", "loadtest")
	if err == nil {
		_, err = pc.AddTransceiverFromTrack(c.track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	}
	if err != nil {
		_ = pc.Close()
		return nil, err
	}
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		switch s {
		case webrtc.PeerConnectionStateConnected:
			once.Do(func() { close(connected) })
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed, webrtc.PeerConnectionStateDisconnected:
			c.gone.Store(true)
		}
	})
	offer, err := pc.CreateOffer(nil)
	if err == nil {
		gathered := webrtc.GatheringCompletePromise(pc)
		if err = pc.SetLocalDescription(offer); err == nil {
			select {
			case <-gathered:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
	}
	if err == nil {
		err = c.post(ctx, pc.LocalDescription().SDP)
	}
	if err == nil {
		select {
		case <-connected:
		case <-ctx.Done():
			err = fmt.Errorf("loadtest: WHIP %s: not connected: %w", c.call, ctx.Err())
		}
	}
	if err != nil {
		if c.location != "" {
			t.hangup(c, 0)
		} else {
			_ = pc.Close()
		}
		return nil, err
	}
	return c, nil
}

// whipCall is one WHIP session.
type whipCall struct {
	t        *whipTarget
	pc       *webrtc.PeerConnection
	track    *webrtc.TrackLocalStaticSample
	location string
	call     string
	gone     atomic.Bool
}

// post sends the offer and applies the answer; a 503 is a *RefusedError.
func (c *whipCall) post(ctx context.Context, offer string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.t.endpoint, strings.NewReader(offer))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("User-Agent", "callrouter-loadtest")
	if c.t.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.t.token)
	}
	res, err := c.t.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	switch {
	case res.StatusCode == http.StatusServiceUnavailable || res.StatusCode == http.StatusTooManyRequests:
		ra, _ := strconv.Atoi(res.Header.Get("Retry-After"))
		return &RefusedError{Code: strconv.Itoa(res.StatusCode), Reason: strings.TrimSpace(string(body)), RetryAfter: time.Duration(max(ra, 1)) * time.Second}
	case res.StatusCode != http.StatusCreated:
		return fmt.Errorf("loadtest: WHIP POST: %s: %s", res.Status, strings.TrimSpace(string(body)))
	}
	loc, err := res.Request.URL.Parse(res.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("loadtest: WHIP POST: Location: %w", err)
	}
	c.location, c.call = loc.String(), res.Header.Get(whipCallHeader)
	return c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(body)})
}

// callID is the server's name for the call, which the workers report under.
func (c *whipCall) callID() string { return c.call }

func (c *whipCall) Send(leg int, payload []byte) error {
	if leg != 0 {
		return ErrLeg
	}
	if c.gone.Load() {
		return ErrEnded
	}
	if err := c.track.WriteSample(media.Sample{Data: payload, Duration: frame.Duration}); err != nil {
		return err
	}
	c.t.sent.Add(1)
	return nil
}

func (c *whipCall) End() { c.t.hangup(c, c.t.wait) }

// hangup deletes the session (RFC 9725 section 4.2) off the pacer's goroutine and closes the
// peer connection.
func (t *whipTarget) hangup(c *whipCall, after time.Duration) {
	t.ends.Add(1)
	go func() {
		defer t.ends.Done()
		defer c.pc.Close()
		time.Sleep(after)
		req, err := http.NewRequest(http.MethodDelete, c.location, nil)
		if err != nil {
			return
		}
		if t.token != "" {
			req.Header.Set("Authorization", "Bearer "+t.token)
		}
		if res, err := t.http.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
}
