package sfu

import "strings"

// Codec-specific parsing the SFU does itself: whether an RTP payload starts
// a keyframe (a subscriber switches layer or source only there), per codec.
// These are pure functions over outside input and have fuzz targets.

// codecKind identifies a video payload format.
type codecKind uint8

const (
	codecOther codecKind = iota
	codecVP8
	codecVP9
	codecH264
	codecAV1
)

func codecOf(mime string) codecKind {
	switch strings.ToLower(mime) {
	case "video/vp8":
		return codecVP8
	case "video/vp9":
		return codecVP9
	case "video/h264":
		return codecH264
	case "video/av1":
		return codecAV1
	}
	return codecOther
}

// isKeyframe reports whether payload is the first packet of a keyframe in
// format c. Unknown formats report true: the SFU then switches at once.
func isKeyframe(c codecKind, payload []byte) bool {
	switch c {
	case codecVP8:
		return vp8Keyframe(payload)
	case codecVP9:
		return vp9Keyframe(payload)
	case codecH264:
		return h264Keyframe(payload)
	case codecAV1:
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

// audioLevel decodes the RFC 6464 one-byte audio level extension: it
// returns 127 - level, so that 0 is silence and 127 the loudest, and
// whether the voice activity bit is set.
func audioLevel(ext []byte) (level int, voice bool, ok bool) {
	if len(ext) < 1 {
		return 0, false, false
	}
	return 127 - int(ext[0]&0x7f), ext[0]&0x80 != 0, true
}
