package sip

import (
	"context"
	"log/slog"
	"time"

	"github.com/rs/zerolog"
)

// slogToZerolog forwards sipgo's slog records at warning level and above to zerolog, sampled so
// that a flood of malformed packets cannot flood the log.
type slogToZerolog struct {
	log   zerolog.Logger
	attrs []slog.Attr
}

func newSlog(l zerolog.Logger) *slog.Logger {
	l = l.With().Str("component", "sipgo").Logger().Sample(&zerolog.BurstSampler{Burst: 10, Period: 10 * time.Second})
	return slog.New(&slogToZerolog{log: l})
}

func (h *slogToZerolog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *slogToZerolog) Handle(_ context.Context, r slog.Record) error {
	ev := h.log.Warn()
	if r.Level >= slog.LevelError {
		ev = h.log.Error()
	}
	add := func(a slog.Attr) bool {
		if a.Key == "data" { // raw packets are never logged
			return true
		}
		ev = ev.Str(a.Key, a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	ev.Msg(r.Message)
	return nil
}

func (h *slogToZerolog) WithAttrs(as []slog.Attr) slog.Handler {
	return &slogToZerolog{log: h.log, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *slogToZerolog) WithGroup(string) slog.Handler { return h }
