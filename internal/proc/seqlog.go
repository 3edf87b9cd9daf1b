package proc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/callrouter/callrouter/internal/frame"
)

// SeqRecordLen is the size of one seqlog record: sequence (uint32 LE), flags (uint8), epoch
// (uint32 LE).
const SeqRecordLen = 9

func init() {
	Register("seqlog", func(o Options) (Processor, error) {
		if o["dir"] == "" {
			return nil, errors.New("seqlog needs option dir (-proc-opt seqlog.dir=/path)")
		}
		if err := os.MkdirAll(o["dir"], 0o755); err != nil {
			return nil, err
		}
		return seqlog{dir: o["dir"]}, nil
	})
}

// seqlog is an audit processor: it appends every processed frame's sequence number, flags and
// epoch to a file per call, leg and worker (<dir>/<tenant>.<call>.<leg>.<worker>.seq), written
// through at once so a killed worker's record is complete up to its death. Failover tests and
// audits read these files to prove that no sequence number was skipped.
type seqlog struct{ dir string }

type seqlogCall struct {
	c     Call
	files []*os.File
	rec   [SeqRecordLen]byte
}

func (s seqlog) Start(c Call) (Handler, error) {
	h := &seqlogCall{c: c}
	for _, l := range c.Spec().Legs {
		name := fmt.Sprintf("%s.%s.%d.%s.seq", c.Spec().Tenant, c.Spec().Call, l.Index, c.Worker())
		f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			h.Stop("")
			return nil, err
		}
		h.files = append(h.files, f)
	}
	return h, nil
}

func (h *seqlogCall) Frame(f *Frame) {
	if int(f.Header.Leg) >= len(h.files) {
		return
	}
	binary.LittleEndian.PutUint32(h.rec[0:], f.Header.Seq)
	h.rec[4] = byte(f.Header.Flags)
	binary.LittleEndian.PutUint32(h.rec[5:], f.Header.Epoch)
	if _, err := h.files[f.Header.Leg].Write(h.rec[:]); err != nil {
		h.c.Log().Error().Err(err).Msg("seqlog write failed")
	}
}

func (h *seqlogCall) Stop(string) {
	for _, f := range h.files {
		_ = f.Close()
	}
}

// SeqRecord is one decoded seqlog record.
type SeqRecord struct {
	Seq   uint32
	Flags frame.Flags
	Epoch uint32
}

// ReadSeqLog decodes a seqlog file.
func ReadSeqLog(path string) ([]SeqRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := make([]SeqRecord, 0, len(b)/SeqRecordLen)
	for len(b) >= SeqRecordLen {
		out = append(out, SeqRecord{Seq: binary.LittleEndian.Uint32(b), Flags: frame.Flags(b[4]), Epoch: binary.LittleEndian.Uint32(b[5:])})
		b = b[SeqRecordLen:]
	}
	return out, nil
}
