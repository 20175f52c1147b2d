package rtpcodec

import (
	"encoding/binary"
	"github.com/traverse-rtc/traverse/internal/rtpcodec/rtpcodectest"
	"testing"
)

// bitWriter writes big-endian bit fields and Exp-Golomb codes: the tests
// build H.264 and AV1 headers field by field, as the specifications list
// them.
type bitWriter struct {
	b []byte
	n int // bits written
}

func (w *bitWriter) u(bits int, v uint64) {
	for i := bits - 1; i >= 0; i-- {
		if w.n%8 == 0 {
			w.b = append(w.b, 0)
		}
		w.b[len(w.b)-1] |= byte(v>>i&1) << (7 - w.n%8)
		w.n++
	}
}

func (w *bitWriter) ue(v uint32) {
	x := uint64(v) + 1
	bits := 0
	for t := x; t > 1; t >>= 1 {
		bits++
	}
	w.u(bits, 0)
	w.u(bits+1, x)
}

func (w *bitWriter) se(v int32) {
	if v > 0 {
		w.ue(uint32(2*v - 1))
	} else {
		w.ue(uint32(-2 * v))
	}
}

// escapeRBSP inserts emulation prevention bytes (H.264 section 7.4.1).
func escapeRBSP(rbsp []byte) []byte {
	var out []byte
	zeros := 0
	for _, b := range rbsp {
		if zeros >= 2 && b <= 3 {
			out = append(out, 3)
			zeros = 0
		}
		out = append(out, b)
		if b == 0 {
			zeros++
		} else {
			zeros = 0
		}
	}
	return out
}

type spsFields struct {
	profile      uint64
	chroma       uint32 // high profiles only
	scaling      bool   // a scaling matrix with two lists present
	pocType      uint32
	wmbs, hmaps  uint32
	frameMbsOnly bool
	crop         [4]uint32 // left, right, top, bottom
	cropped      bool
	// lowLevel writes level 0 and sequence parameter set id 63: bytes 00
	// 00 02 that need an emulation prevention byte.
	lowLevel bool
}

// sps returns an H.264 SPS NAL unit (with its header) of f.
func (f spsFields) sps() []byte {
	var w bitWriter
	w.u(8, f.profile)
	w.u(8, 0) // constraint flags
	if f.lowLevel {
		w.u(8, 0)
		w.ue(63)
	} else {
		w.u(8, 31) // level 3.1
		w.ue(0)    // seq_parameter_set_id
	}
	if f.profile == 100 {
		w.ue(f.chroma)
		w.ue(0)
		w.ue(0)
		w.u(1, 0)
		if f.scaling {
			w.u(1, 1)
			for k := range 8 {
				if k == 0 || k == 6 {
					w.u(1, 1) // a list: deltas that reach 0 after a few
					w.se(-8)
				} else {
					w.u(1, 0)
				}
			}
		} else {
			w.u(1, 0)
		}
	}
	w.ue(4) // log2_max_frame_num_minus4
	w.ue(f.pocType)
	switch f.pocType {
	case 0:
		w.ue(4)
	case 1:
		w.u(1, 0)
		w.se(-3)
		w.se(2)
		w.ue(2)
		w.se(1)
		w.se(-1)
	}
	w.ue(1) // max_num_ref_frames
	w.u(1, 0)
	w.ue(f.wmbs - 1)
	w.ue(f.hmaps - 1)
	if f.frameMbsOnly {
		w.u(1, 1)
	} else {
		w.u(1, 0)
		w.u(1, 0)
	}
	w.u(1, 1) // direct_8x8_inference_flag
	if f.cropped {
		w.u(1, 1)
		for _, c := range f.crop {
			w.ue(c)
		}
	} else {
		w.u(1, 0)
	}
	w.u(1, 0) // vui_parameters_present_flag
	w.u(1, 1) // rbsp stop bit
	return append([]byte{0x67}, escapeRBSP(w.b)...)
}

// av1SequenceHeader returns a sequence header OBU's payload for a
// maxW x maxH stream; timing adds timing and decoder model info.
func av1SequenceHeader(maxW, maxH uint64, timing bool) []byte {
	var w bitWriter
	w.u(3, 0) // seq_profile
	w.u(1, 0) // still_picture
	w.u(1, 0) // reduced_still_picture_header
	w.u(1, boolBit(timing))
	if timing {
		w.u(32, 1)
		w.u(32, 30)
		w.u(1, 1) // equal_picture_interval
		w.u(3, 1) // num_ticks_per_picture_minus_1: uvlc 3 (001 00)
		w.u(2, 0)
		w.u(1, 1) // decoder_model_info_present_flag
		w.u(5, 9) // buffer_delay_length_minus_1: 10-bit delays
		w.u(32, 1)
		w.u(5, 4)
		w.u(5, 4)
	}
	w.u(1, 1) // initial_display_delay_present_flag
	w.u(5, 1) // two operating points
	for i := range 2 {
		w.u(12, uint64(i))
		w.u(5, 8) // seq_level_idx 8: a tier bit follows
		w.u(1, 0)
		if timing {
			w.u(1, 1)
			w.u(10, 5)
			w.u(10, 6)
			w.u(1, 0)
		}
		w.u(1, 1)
		w.u(4, 9)
	}
	w.u(4, 11) // frame_width_bits_minus_1
	w.u(4, 10)
	w.u(12, maxW-1)
	w.u(11, maxH-1)
	w.u(8, 0) // the rest, whatever it is
	return w.b
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func TestFrameSize(t *testing.T) {
	sps := spsFields{profile: 66, wmbs: 40, hmaps: 30, frameMbsOnly: true, pocType: 2}.sps()
	hd := spsFields{profile: 100, chroma: 1, scaling: true, pocType: 1, wmbs: 120, hmaps: 68, frameMbsOnly: true,
		cropped: true, crop: [4]uint32{0, 0, 0, 4}}.sps()
	interlaced := spsFields{profile: 100, chroma: 1, pocType: 0, wmbs: 45, hmaps: 18, cropped: true,
		crop: [4]uint32{4, 4, 0, 0}}.sps()
	zeros := spsFields{profile: 66, wmbs: 1, hmaps: 1, frameMbsOnly: true, pocType: 0, lowLevel: true}.sps()
	if zeros[3] != 0 || zeros[4] != 3 {
		t.Fatalf("the test's SPS has no emulation prevention byte: % x", zeros)
	}
	pps := []byte{0x68, 0xce, 0x3c, 0x80}
	stap := []byte{0x78}
	for _, n := range [][]byte{sps, pps} {
		stap = binary.BigEndian.AppendUint16(stap, uint16(len(n)))
		stap = append(stap, n...)
	}
	stapPPSFirst := []byte{0x78}
	for _, n := range [][]byte{pps, hd} {
		stapPPSFirst = binary.BigEndian.AppendUint16(stapPPSFirst, uint16(len(n)))
		stapPPSFirst = append(stapPPSFirst, n...)
	}
	fua := append([]byte{0x7c, 0x87}, hd[1:]...)

	seq := av1SequenceHeader(1280, 720, false)
	av1One := append([]byte{0x18, 0x0a, byte(len(seq))}, seq...) // W=1, N=1; OBU with a size field
	seqT := av1SequenceHeader(640, 360, true)
	td := []byte{0x12, 0x00}                             // a temporal delimiter OBU
	av1Two := append([]byte{0x08, byte(len(td))}, td...) // W=0: every element has a length
	av1Two = append(av1Two, byte(len(seqT)+1), 0x08)     // sequence header, no size field
	av1Two = append(av1Two, seqT...)

	for _, c := range []struct {
		name string
		c    Codec
		p    []byte
		w, h int
		ok   bool
	}{
		{"vp8 720p", VP8, rtpcodectest.VP8Key(1280, 720), 1280, 720, true},
		{"vp8 plain descriptor", VP8, append([]byte{0x10}, rtpcodectest.VP8Key(320, 240)[4:]...), 320, 240, true},
		{"vp8 inter frame", VP8, append([]byte{0x10, 0x01}, rtpcodectest.VP8Key(320, 240)[5:]...), 0, 0, false},
		{"vp8 not partition start", VP8, append([]byte{0x00}, rtpcodectest.VP8Key(320, 240)[4:]...), 0, 0, false},
		{"vp8 bad start code", VP8, append([]byte{0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2b}, 0, 5, 0, 5), 0, 0, false},
		{"vp8 short", VP8, rtpcodectest.VP8Key(1280, 720)[:12], 0, 0, false},
		{"vp9 ss one layer", VP9, []byte{0x8a, 0x80, 0x01, 0x10, 0x02, 0x80, 0x01, 0x68}, 640, 360, true},
		{"vp9 ss three layers", VP9, []byte{0x0a, 0x50, 0x00, 0xa0, 0x00, 0x5a, 0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68}, 640, 360, true},
		{"vp9 layer indices", VP9, []byte{0xaa, 0x05, 0x00, 0x07, 0x10, 0x01, 0x40, 0x00, 0xf0}, 320, 240, true},
		{"vp9 flexible refs", VP9, []byte{0x5a, 0x03, 0x02, 0x10, 0x00, 0xa0, 0x00, 0x78}, 160, 120, true},
		{"vp9 no ss", VP9, []byte{0x88, 0x01, 0x00}, 0, 0, false},
		{"vp9 ss without sizes", VP9, []byte{0x0a, 0x00}, 0, 0, false},
		{"vp9 ss cut", VP9, []byte{0x0a, 0x10, 0x01, 0x40}, 0, 0, false},
		{"h264 sps", H264, sps, 640, 480, true},
		{"h264 stap-a", H264, stap, 640, 480, true},
		{"h264 stap-a high profile cropped", H264, stapPPSFirst, 1920, 1080, true},
		{"h264 fu-a", H264, fua, 1920, 1080, true},
		{"h264 interlaced", H264, interlaced, 704, 576, true},
		{"h264 emulation prevention", H264, zeros, 16, 16, true},
		{"h264 idr only", H264, []byte{0x65, 0x88, 0x84}, 0, 0, false},
		{"h264 sps cut", H264, sps[:6], 0, 0, false},
		{"h264 stap-a bad length", H264, []byte{0x78, 0x00, 0x09, 0x67}, 0, 0, false},
		{"av1 one obu", AV1, av1One, 1280, 720, true},
		{"av1 with timing info", AV1, av1Two, 640, 360, true},
		{"av1 continuation", AV1, append([]byte{0x98}, av1One[1:]...), 0, 0, false},
		{"av1 cut", AV1, av1One[:8], 0, 0, false},
		{"opus", Other, rtpcodectest.VP8Key(1280, 720), 0, 0, false},
	} {
		w, h, ok := c.c.FrameSize(c.p)
		if w != c.w || h != c.h || ok != c.ok {
			t.Errorf("%s: %dx%d %v, want %dx%d %v", c.name, w, h, ok, c.w, c.h, c.ok)
		}
	}
}

// FuzzFrameSize: no payload panics the size parsers, and a size they
// report is a real one.
func FuzzFrameSize(f *testing.F) {
	f.Add(uint8(VP8), rtpcodectest.VP8Key(1280, 720))
	f.Add(uint8(VP9), []byte{0x8a, 0x80, 0x01, 0x10, 0x02, 0x80, 0x01, 0x68})
	f.Add(uint8(H264), spsFields{profile: 100, chroma: 1, scaling: true, pocType: 1, wmbs: 120, hmaps: 68,
		frameMbsOnly: true, cropped: true, crop: [4]uint32{0, 0, 0, 4}}.sps())
	seq := av1SequenceHeader(1280, 720, true)
	f.Add(uint8(AV1), append([]byte{0x18, 0x0a, byte(len(seq))}, seq...))
	f.Fuzz(func(t *testing.T, c uint8, p []byte) {
		w, h, ok := Codec(c % 5).FrameSize(p)
		if ok && (w <= 0 || h <= 0 || w > 1<<16 || h > 1<<16) {
			t.Fatalf("size %dx%d", w, h)
		}
		if !ok && (w != 0 || h != 0) {
			t.Fatalf("no size but %dx%d", w, h)
		}
	})
}
