// Package rtpcodec is the codec-specific parsing of RTP payloads the SFU
// does itself: whether a payload starts a keyframe (a subscriber switches
// layer or source only there: VP8 RFC 7741, VP9 RFC 9628, H.264 RFC 6184,
// AV1's RTP specification), the frame size a keyframe carries
// (framesize.go), and the RFC 6464 audio level. These are pure functions
// over outside input, each with a fuzz target (FuzzKeyframe,
// FuzzFrameSize).
package rtpcodec

import "strings"

// Codec identifies a video payload format; Other is every other one
// (audio among them).
type Codec uint8

// The formats this package parses.
const (
	Other Codec = iota
	VP8
	VP9
	H264
	AV1
)

// CodecOf returns the format of a MIME type ("video/VP8"), Other for a
// format this package does not parse.
func CodecOf(mime string) Codec {
	switch strings.ToLower(mime) {
	case "video/vp8":
		return VP8
	case "video/vp9":
		return VP9
	case "video/h264":
		return H264
	case "video/av1":
		return AV1
	}
	return Other
}

// Keyframe reports whether payload is the first packet of a keyframe in
// format c. Unknown formats report true: the SFU then switches at once.
func (c Codec) Keyframe(payload []byte) bool {
	switch c {
	case VP8:
		return vp8Keyframe(payload)
	case VP9:
		return vp9Keyframe(payload)
	case H264:
		return h264Keyframe(payload)
	case AV1:
		return av1Keyframe(payload)
	}
	return true
}

// vp8Keyframe parses the RFC 7741 section 4.2 payload descriptor and the
// first byte of the VP8 frame header (RFC 6386 section 9.1: P bit 0 means
// a key frame).
func vp8Keyframe(p []byte) bool {
	i, ok := vp8PayloadStart(p)
	return ok && p[i]&0x01 == 0
}

// vp8PayloadStart returns where the VP8 payload header starts in p (after
// the RFC 7741 section 4.2 payload descriptor), and whether p starts the
// first partition of a frame (S set, PID 0) with a header byte to read.
func vp8PayloadStart(p []byte) (int, bool) {
	if len(p) < 1 {
		return 0, false
	}
	b0 := p[0]
	s := b0&0x10 != 0
	pid := b0 & 0x07
	i := 1
	if b0&0x80 != 0 { // X
		if len(p) < 2 {
			return 0, false
		}
		x := p[1]
		i = 2
		if x&0x80 != 0 { // I: picture id
			if len(p) <= i {
				return 0, false
			}
			if p[i]&0x80 != 0 { // M: 15-bit picture id
				i += 2
			} else {
				i++
			}
		}
		if x&0x40 != 0 { // L: TL0PICIDX
			i++
		}
		if x&0x30 != 0 { // T or K
			i++
		}
	}
	if !s || pid != 0 || len(p) <= i {
		return 0, false
	}
	return i, true
}

// vp9Keyframe parses the RFC 9628 section 4.2 payload descriptor: the start
// of a frame (B) that is not inter-picture predicted (P clear) in spatial
// layer 0.
func vp9Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	b0 := p[0]
	if b0&0x40 != 0 || b0&0x08 == 0 { // P set or B clear
		return false
	}
	if b0&0x20 == 0 { // no layer indices
		return true
	}
	i := 1
	if b0&0x80 != 0 { // I: picture id
		if len(p) <= i {
			return false
		}
		if p[i]&0x80 != 0 {
			i += 2
		} else {
			i++
		}
	}
	if len(p) <= i {
		return false
	}
	return (p[i]>>1)&0x07 == 0
}

// h264Keyframe looks for an IDR slice (type 5) or a sequence parameter set
// (type 7) in a single NAL unit, a STAP-A (24) or the start of an FU-A (28)
// (RFC 6184 section 5).
func h264Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	switch t := p[0] & 0x1f; t {
	case 5, 7:
		return true
	case 24: // STAP-A: 16-bit sizes, each followed by a NAL unit
		for i := 1; i+2 < len(p); {
			n := int(p[i])<<8 | int(p[i+1])
			i += 2
			if n == 0 || i+n > len(p) {
				return false
			}
			if t := p[i] & 0x1f; t == 5 || t == 7 {
				return true
			}
			i += n
		}
		return false
	case 28: // FU-A
		if len(p) < 2 {
			return false
		}
		t := p[1] & 0x1f
		return p[1]&0x80 != 0 && (t == 5 || t == 7)
	}
	return false
}

// av1Keyframe reads the N bit of the AV1 RTP aggregation header (AV1 RTP
// specification section 4.4): the first packet of a coded video sequence.
func av1Keyframe(p []byte) bool {
	return len(p) >= 1 && p[0]&0x08 != 0
}

// AudioLevel decodes the RFC 6464 one-byte audio level extension: it
// returns 127 - level, so that 0 is silence and 127 the loudest, and
// whether the voice activity bit is set.
func AudioLevel(ext []byte) (level int, voice bool, ok bool) {
	if len(ext) < 1 {
		return 0, false, false
	}
	return 127 - int(ext[0]&0x7f), ext[0]&0x80 != 0, true
}
