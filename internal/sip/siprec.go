package sip

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"strings"
)

// Limits on SIP bodies.
const (
	maxBodyParts = 8
	maxPartSize  = 64 << 10
)

// errBody means a body could not be parsed; the INVITE gets 400.
var errBody = errors.New("sip: bad body")

// errMediaType means a body of a type callrouter does not take; the INVITE gets 415.
var errMediaType = errors.New("sip: unsupported media type")

// body is what an INVITE's body carries: the SDP offer and, for SIPREC, the recording metadata.
type body struct {
	sdp      []byte
	metadata []byte // application/rs-metadata+xml (RFC 7865)
}

// parseBody splits an application/sdp or multipart/mixed body (RFC 7866 section 8.1.1).
func parseBody(contentType string, b []byte) (body, error) {
	if len(b) == 0 {
		return body{}, nil
	}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return body{}, fmt.Errorf("%w: content type %q: %v", errBody, contentType, err)
	}
	switch mt {
	case "application/sdp":
		return body{sdp: b}, nil
	case "multipart/mixed", "multipart/related", "multipart/alternative":
	default:
		return body{}, fmt.Errorf("%w: %s", errMediaType, mt)
	}
	boundary := params["boundary"]
	if boundary == "" {
		return body{}, fmt.Errorf("%w: multipart without boundary", errBody)
	}
	var out body
	r := multipart.NewReader(bytes.NewReader(b), boundary)
	for i := 0; ; i++ {
		p, err := r.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return body{}, fmt.Errorf("%w: multipart: %v", errBody, err)
		}
		if i >= maxBodyParts {
			return body{}, fmt.Errorf("%w: more than %d parts", errBody, maxBodyParts)
		}
		data, err := io.ReadAll(io.LimitReader(p, maxPartSize+1))
		if err != nil || len(data) > maxPartSize {
			return body{}, fmt.Errorf("%w: multipart part too large or unreadable", errBody)
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch pt {
		case "application/sdp":
			out.sdp = data
		case "application/rs-metadata+xml", "application/rs-metadata":
			out.metadata = data
		}
	}
	if out.sdp == nil {
		return body{}, fmt.Errorf("%w: multipart body without application/sdp", errMediaType)
	}
	return out, nil
}

// recording is the subset of the RFC 7865 metadata model callrouter reads.
type recording struct {
	XMLName      xml.Name         `xml:"recording"`
	DataMode     string           `xml:"datamode"`
	Sessions     []recSession     `xml:"session"`
	Participants []recParticipant `xml:"participant"`
	Streams      []recStream      `xml:"stream"`
	Assocs       []recAssoc       `xml:"participantstreamassoc"`
}

type recSession struct {
	ID           string   `xml:"session_id,attr"`
	SIPSessionID []string `xml:"sipSessionID"`
}

type recParticipant struct {
	ID      string      `xml:"participant_id,attr"`
	NameIDs []recNameID `xml:"nameID"`
	Send    []string    `xml:"send"` // the older RFC 6341-style association inside participant
}

type recNameID struct {
	AOR  string `xml:"aor,attr"`
	Name string `xml:"name"`
}

type recStream struct {
	ID      string `xml:"stream_id,attr"`
	Session string `xml:"session_id,attr"`
	Label   string `xml:"label"`
}

type recAssoc struct {
	Participant string   `xml:"participant_id,attr"`
	Send        []string `xml:"send"`
	Recv        []string `xml:"recv"`
}

// parseMetadata decodes rs-metadata XML. External entities are never resolved (encoding/xml does
// not), and the size is bounded by the caller.
func parseMetadata(b []byte) (*recording, error) {
	var r recording
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	d.CharsetReader = func(charset string, in io.Reader) (io.Reader, error) {
		if strings.EqualFold(charset, "utf-8") || strings.EqualFold(charset, "us-ascii") {
			return in, nil
		}
		return nil, fmt.Errorf("charset %q not supported", charset)
	}
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: rs-metadata: %v", errBody, err)
	}
	if len(r.Participants) > 32 || len(r.Streams) > 32 || len(r.Assocs) > 64 {
		return nil, fmt.Errorf("%w: rs-metadata too large", errBody)
	}
	return &r, nil
}

// participant is one SIPREC participant as callrouter reports it.
type participant struct {
	ID   string `json:"id"`
	AOR  string `json:"aor,omitempty"`
	Name string `json:"name,omitempty"`
	Leg  string `json:"leg,omitempty"`
}

// merge applies an update (datamode partial, RFC 7865 section 6) to r.
func (r *recording) merge(u *recording) {
	if u.DataMode != "partial" {
		*r = *u
		return
	}
	for _, p := range u.Participants {
		replaced := false
		for i := range r.Participants {
			if r.Participants[i].ID == p.ID {
				r.Participants[i], replaced = p, true
			}
		}
		if !replaced {
			r.Participants = append(r.Participants, p)
		}
	}
	r.Streams = append(r.Streams, u.Streams...)
	r.Assocs = append(r.Assocs, u.Assocs...)
}

// senderOfLabel returns the index in r.Participants of the participant sending the stream with
// the given SDP label, or -1.
func (r *recording) senderOfLabel(label string) int {
	sid := ""
	for _, s := range r.Streams {
		if s.Label == label {
			sid = s.ID
		}
	}
	if sid == "" {
		return -1
	}
	for _, a := range r.Assocs {
		for _, s := range a.Send {
			if strings.TrimSpace(s) == sid {
				for i, p := range r.Participants {
					if p.ID == a.Participant {
						return i
					}
				}
			}
		}
	}
	for i, p := range r.Participants {
		for _, s := range p.Send {
			if strings.TrimSpace(s) == sid {
				return i
			}
		}
	}
	return -1
}

// identity returns a participant's first AOR and display name.
func (p recParticipant) identity() (aor, name string) {
	for _, n := range p.NameIDs {
		if aor == "" {
			aor = strings.TrimSpace(n.AOR)
		}
		if name == "" {
			name = strings.TrimSpace(n.Name)
		}
	}
	return aor, name
}
