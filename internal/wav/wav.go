// Package wav reads and writes RIFF WAVE files in the encodings callrouter carries: 16-bit PCM,
// G.711 μ-law and A-law, mono or multi-channel. Standard library only.
package wav

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Formats (the WAVE fmt chunk's format tag).
const (
	FormatPCM        = 1
	FormatALaw       = 6
	FormatMuLaw      = 7
	FormatExtensible = 0xFFFE
)

// ErrFormat means the file is not a WAVE file this package understands.
var ErrFormat = errors.New("wav: unsupported format")

// Audio is a decoded WAV file: Channels holds each channel's bytes in the file's encoding
// (little-endian int16 for PCM, one byte per sample for G.711).
type Audio struct {
	Format        int // FormatPCM, FormatALaw or FormatMuLaw
	Rate          int
	BitsPerSample int
	Channels      [][]byte
}

// BytesPerSample returns 2 for PCM16, 1 for G.711.
func (a *Audio) BytesPerSample() int { return a.BitsPerSample / 8 }

// Samples returns the number of samples per channel.
func (a *Audio) Samples() int {
	if len(a.Channels) == 0 {
		return 0
	}
	return len(a.Channels[0]) / a.BytesPerSample()
}

// ReadFile reads a WAV file.
func ReadFile(path string) (*Audio, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	a, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// Parse decodes a WAV file held in memory.
func Parse(b []byte) (*Audio, error) {
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return nil, fmt.Errorf("%w: not a RIFF/WAVE file", ErrFormat)
	}
	var a Audio
	var channels int
	var data []byte
	haveFmt := false
	for p := 12; p+8 <= len(b); {
		id := string(b[p : p+4])
		size := int(binary.LittleEndian.Uint32(b[p+4:]))
		body := b[p+8:]
		if size > len(body) || size < 0 {
			size = len(body) // tolerate a truncated or streaming-written last chunk
		}
		body = body[:size]
		switch id {
		case "fmt ":
			if size < 16 {
				return nil, fmt.Errorf("%w: short fmt chunk", ErrFormat)
			}
			a.Format = int(binary.LittleEndian.Uint16(body[0:]))
			channels = int(binary.LittleEndian.Uint16(body[2:]))
			a.Rate = int(binary.LittleEndian.Uint32(body[4:]))
			a.BitsPerSample = int(binary.LittleEndian.Uint16(body[14:]))
			if a.Format == FormatExtensible && size >= 26 {
				a.Format = int(binary.LittleEndian.Uint16(body[24:]))
			}
			haveFmt = true
		case "data":
			data = body
		}
		p += 8 + size + size%2
	}
	if !haveFmt || data == nil {
		return nil, fmt.Errorf("%w: missing fmt or data chunk", ErrFormat)
	}
	switch {
	case a.Format == FormatPCM && a.BitsPerSample == 16:
	case (a.Format == FormatALaw || a.Format == FormatMuLaw) && a.BitsPerSample == 8:
	default:
		return nil, fmt.Errorf("%w: format %d with %d bits (want 16-bit PCM, A-law or μ-law)", ErrFormat, a.Format, a.BitsPerSample)
	}
	if channels < 1 || channels > 8 || a.Rate <= 0 {
		return nil, fmt.Errorf("%w: %d channels at %d Hz", ErrFormat, channels, a.Rate)
	}
	bps := a.BitsPerSample / 8
	frames := len(data) / (bps * channels)
	a.Channels = make([][]byte, channels)
	for c := range a.Channels {
		a.Channels[c] = make([]byte, frames*bps)
	}
	for i := 0; i < frames; i++ {
		for c := 0; c < channels; c++ {
			src := data[(i*channels+c)*bps:]
			copy(a.Channels[c][i*bps:(i+1)*bps], src[:bps])
		}
	}
	return &a, nil
}

// Write writes a WAV file with the given format, rate and channel data (equal lengths).
func Write(w io.Writer, format, rate, bits int, channels [][]byte) error {
	if len(channels) == 0 {
		return errors.New("wav: no channels")
	}
	bps := bits / 8
	n := len(channels[0])
	for _, c := range channels {
		if len(c) != n {
			return errors.New("wav: channels differ in length")
		}
	}
	data := make([]byte, n*len(channels))
	for i := 0; i < n/bps; i++ {
		for c, ch := range channels {
			copy(data[(i*len(channels)+c)*bps:], ch[i*bps:(i+1)*bps])
		}
	}
	hdr := make([]byte, 44)
	copy(hdr[0:], "RIFF")
	binary.LittleEndian.PutUint32(hdr[4:], uint32(36+len(data)))
	copy(hdr[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(hdr[16:], 16)
	binary.LittleEndian.PutUint16(hdr[20:], uint16(format))
	binary.LittleEndian.PutUint16(hdr[22:], uint16(len(channels)))
	binary.LittleEndian.PutUint32(hdr[24:], uint32(rate))
	binary.LittleEndian.PutUint32(hdr[28:], uint32(rate*bps*len(channels)))
	binary.LittleEndian.PutUint16(hdr[32:], uint16(bps*len(channels)))
	binary.LittleEndian.PutUint16(hdr[34:], uint16(bits))
	copy(hdr[36:], "data")
	binary.LittleEndian.PutUint32(hdr[40:], uint32(len(data)))
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}
