package rtpcodec

import "encoding/binary"

// The size of a simulcast layer, read from its keyframes: the SFU picks
// the lowest layer that covers the size a subscriber shows a video at
// (LayerRequest's Width and Height), and browsers choose a layer's size
// from the camera's (a 640x480 camera's layers are not a 1280x720
// camera's, and a browser may send fewer layers than it announced). Each
// function reads one keyframe's first packet payload (outside input: the
// fuzz target is FuzzFrameSize) and reports false when the size is not
// there.

// FrameSize returns the coded frame size in the keyframe payload p of
// format c.
func (c Codec) FrameSize(p []byte) (w, h int, ok bool) {
	switch c {
	case VP8:
		return vp8Size(p)
	case VP9:
		return vp9Size(p)
	case H264:
		return h264Size(p)
	case AV1:
		return av1Size(p)
	}
	return 0, 0, false
}

// sized reports w x h, or false when either is 0.
func sized(w, h int) (int, int, bool) {
	if w <= 0 || h <= 0 {
		return 0, 0, false
	}
	return w, h, true
}

// vp8Size reads a key frame's header (RFC 6386 section 9.1): after the
// 3-byte frame tag, the start code 9d 01 2a and two little-endian 14-bit
// dimensions (their top two bits are the upscaling mode).
func vp8Size(p []byte) (w, h int, ok bool) {
	i, ok := vp8PayloadStart(p)
	if !ok || len(p) < i+10 || p[i]&0x01 != 0 {
		return 0, 0, false
	}
	f := p[i:]
	if f[3] != 0x9d || f[4] != 0x01 || f[5] != 0x2a {
		return 0, 0, false
	}
	return sized(int(binary.LittleEndian.Uint16(f[6:])&0x3fff), int(binary.LittleEndian.Uint16(f[8:])&0x3fff))
}

// vp9Size reads the scalability structure of the RFC 9628 section 4.2
// payload descriptor (sent with keyframes; V bit): the size of the highest
// spatial layer, which is what the stream shows.
func vp9Size(p []byte) (w, h int, ok bool) {
	if len(p) < 1 {
		return 0, 0, false
	}
	b0 := p[0]
	i := 1
	if b0&0x80 != 0 { // I: picture id, 7 or 15 bits
		if len(p) <= i {
			return 0, 0, false
		}
		if p[i]&0x80 != 0 {
			i++
		}
		i++
	}
	if b0&0x20 != 0 { // L: layer indices, and TL0PICIDX in non-flexible mode
		i++
		if b0&0x10 == 0 {
			i++
		}
	}
	if b0&0x10 != 0 && b0&0x40 != 0 { // F and P: up to three reference indices
		for range 3 {
			if len(p) <= i {
				return 0, 0, false
			}
			more := p[i]&0x01 != 0
			i++
			if !more {
				break
			}
		}
	}
	if b0&0x02 == 0 || len(p) <= i { // V: no scalability structure
		return 0, 0, false
	}
	ss := p[i]
	if ss&0x10 == 0 { // Y: no sizes
		return 0, 0, false
	}
	n := int(ss>>5) + 1
	i++
	if len(p) < i+4*n {
		return 0, 0, false
	}
	last := p[i+4*(n-1):]
	return sized(int(binary.BigEndian.Uint16(last)), int(binary.BigEndian.Uint16(last[2:])))
}

// h264Size finds a sequence parameter set (NAL type 7) in a single NAL
// unit packet, a STAP-A or the first fragment of an FU-A (RFC 6184
// section 5) and reads the frame size from it.
func h264Size(p []byte) (w, h int, ok bool) {
	if len(p) < 1 {
		return 0, 0, false
	}
	switch p[0] & 0x1f {
	case 7:
		return spsSize(p[1:])
	case 24: // STAP-A
		for i := 1; i+2 < len(p); {
			n := int(p[i])<<8 | int(p[i+1])
			i += 2
			if n == 0 || i+n > len(p) {
				return 0, 0, false
			}
			if p[i]&0x1f == 7 {
				return spsSize(p[i+1 : i+n])
			}
			i += n
		}
	case 28: // FU-A: the SPS is its own NAL unit and rarely fragmented
		if len(p) >= 2 && p[1]&0x80 != 0 && p[1]&0x1f == 7 {
			return spsSize(p[2:])
		}
	}
	return 0, 0, false
}

// spsSize parses an H.264 sequence parameter set's RBSP after the NAL
// header (ITU-T H.264 section 7.3.2.1.1) up to the frame cropping, and
// returns the cropped frame size (section 7.4.2.1.1). It follows the
// syntax table field by field, in its order, hence its length.
func spsSize(nal []byte) (w, h int, ok bool) {
	var rbsp [256]byte
	n := unescapeRBSP(rbsp[:], nal)
	r := bitReader{b: rbsp[:n]}
	profile := r.u(8)
	r.u(16) // constraint flags, level
	r.ue()  // seq_parameter_set_id
	chroma := uint32(1)
	switch profile {
	case 100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135:
		chroma = r.ue()
		if chroma == 3 {
			r.u(1) // separate_colour_plane_flag
		}
		r.ue()        // bit_depth_luma_minus8
		r.ue()        // bit_depth_chroma_minus8
		r.u(1)        // qpprime_y_zero_transform_bypass_flag
		if r.flag() { // seq_scaling_matrix_present_flag
			lists := 8
			if chroma == 3 {
				lists = 12
			}
			for k := range lists {
				if r.flag() {
					size := 16
					if k >= 6 {
						size = 64
					}
					r.skipScalingList(size)
				}
			}
		}
	}
	r.ue()          // log2_max_frame_num_minus4
	switch r.ue() { // pic_order_cnt_type
	case 0:
		r.ue() // log2_max_pic_order_cnt_lsb_minus4
	case 1:
		r.u(1) // delta_pic_order_always_zero_flag
		r.se() // offset_for_non_ref_pic
		r.se() // offset_for_top_to_bottom_field
		cycle := r.ue()
		if cycle > 255 {
			return 0, 0, false
		}
		for range cycle {
			r.se()
		}
	}
	r.ue() // max_num_ref_frames
	r.u(1) // gaps_in_frame_num_value_allowed_flag
	wmbs := r.ue() + 1
	hmaps := r.ue() + 1
	frameMbsOnly := r.flag()
	if !frameMbsOnly {
		r.u(1) // mb_adaptive_frame_field_flag
	}
	r.u(1) // direct_8x8_inference_flag
	var cl, cr, ct, cb uint32
	if r.flag() {
		cl, cr, ct, cb = r.ue(), r.ue(), r.ue(), r.ue()
	}
	if r.bad || wmbs > 1024 || hmaps > 1024 {
		return 0, 0, false
	}
	fieldMul := uint32(2)
	if frameMbsOnly {
		fieldMul = 1
	}
	// Crop units (Table 6-1): 4:2:0 halves both, 4:2:2 the width only.
	cx, cy := uint32(1), fieldMul
	switch chroma {
	case 1:
		cx, cy = 2, 2*fieldMul
	case 2:
		cx = 2
	}
	fw, fh := wmbs*16, fieldMul*hmaps*16
	if cx*(cl+cr) >= fw || cy*(ct+cb) >= fh {
		return 0, 0, false
	}
	return int(fw - cx*(cl+cr)), int(fh - cy*(ct+cb)), true
}

// unescapeRBSP copies nal into dst without its emulation prevention bytes
// (00 00 03 -> 00 00, section 7.4.1), as far as dst holds, and returns the
// length.
func unescapeRBSP(dst, nal []byte) int {
	n, zeros := 0, 0
	for _, b := range nal {
		if n == len(dst) {
			break
		}
		if zeros >= 2 && b == 3 {
			zeros = 0
			continue
		}
		if b == 0 {
			zeros++
		} else {
			zeros = 0
		}
		dst[n] = b
		n++
	}
	return n
}

// av1Size finds a sequence header OBU (type 1) in the first OBU element of
// an AV1 RTP packet (AV1 RTP specification section 4.4: the N bit packet
// that starts a coded video sequence carries it) and reads its maximum
// frame size (AV1 specification section 5.5).
func av1Size(p []byte) (w, h int, ok bool) {
	if len(p) < 2 || p[0]&0x80 != 0 { // Z: the first element continues an OBU
		return 0, 0, false
	}
	elems := int(p[0]>>4) & 0x03 // W: 0 means every element has a length
	i := 1
	for e := 0; i < len(p); e++ {
		n := len(p) - i
		if elems == 0 || e < elems-1 {
			v, k := leb128(p[i:])
			if k == 0 || v > uint64(len(p)-i-k) {
				return 0, 0, false
			}
			i += k
			n = int(v)
		}
		obu := p[i : i+n]
		i += n
		if len(obu) < 1 || (obu[0]>>3)&0x0f != 1 {
			continue
		}
		hdr := 1
		if obu[0]&0x04 != 0 { // extension header
			hdr++
		}
		body := obu[min(hdr, len(obu)):]
		if obu[0]&0x02 != 0 { // has_size_field
			v, k := leb128(body)
			if k == 0 || v > uint64(len(body)-k) {
				return 0, 0, false
			}
			body = body[k : k+int(v)]
		}
		return av1SequenceSize(body)
	}
	return 0, 0, false
}

// av1SequenceSize parses sequence_header_obu up to max_frame_height_minus_1.
func av1SequenceSize(b []byte) (w, h int, ok bool) {
	r := bitReader{b: b}
	r.u(3)        // seq_profile
	r.u(1)        // still_picture
	if r.flag() { // reduced_still_picture_header
		r.u(5) // seq_level_idx[0]
	} else {
		decoderModel := false
		var delayLen int
		if r.flag() { // timing_info_present_flag
			r.u(32)       // num_units_in_display_tick
			r.u(32)       // time_scale
			if r.flag() { // equal_picture_interval
				r.uvlc()
			}
			if decoderModel = r.flag(); decoderModel {
				delayLen = int(r.u(5)) + 1
				r.u(32) // num_units_in_decoding_tick
				r.u(5)  // buffer_removal_time_length_minus_1
				r.u(5)  // frame_presentation_time_length_minus_1
			}
		}
		initialDelay := r.flag()
		points := int(r.u(5)) + 1
		for range points {
			r.u(12)         // operating_point_idc
			if r.u(5) > 7 { // seq_level_idx
				r.u(1) // seq_tier
			}
			if decoderModel && r.flag() {
				r.u(delayLen) // decoder_buffer_delay
				r.u(delayLen) // encoder_buffer_delay
				r.u(1)        // low_delay_mode_flag
			}
			if initialDelay && r.flag() {
				r.u(4)
			}
		}
	}
	wbits := int(r.u(4)) + 1
	hbits := int(r.u(4)) + 1
	w, h = int(r.u(wbits))+1, int(r.u(hbits))+1
	if r.bad {
		return 0, 0, false
	}
	return w, h, true
}

// leb128 decodes an unsigned LEB128 value (AV1 section 4.10.5) of at most
// eight bytes; k is the bytes used, 0 when p ends first.
func leb128(p []byte) (v uint64, k int) {
	for i := 0; i < 8 && i < len(p); i++ {
		v |= uint64(p[i]&0x7f) << (7 * i)
		if p[i]&0x80 == 0 {
			return v, i + 1
		}
	}
	return 0, 0
}

// bitReader reads big-endian bit fields; reading past the end sets bad
// and returns zeros.
type bitReader struct {
	b   []byte
	pos int // in bits
	bad bool
}

func (r *bitReader) u(n int) uint32 {
	var v uint32
	for range n {
		if r.pos >= 8*len(r.b) {
			r.bad = true
			return 0
		}
		v = v<<1 | uint32(r.b[r.pos/8]>>(7-r.pos%8))&1
		r.pos++
	}
	return v
}

func (r *bitReader) flag() bool { return r.u(1) == 1 }

// ue reads an Exp-Golomb code (H.264 section 9.1); codes longer than 31
// bits set bad.
func (r *bitReader) ue() uint32 {
	zeros := 0
	for !r.bad && r.u(1) == 0 {
		zeros++
		if zeros > 31 {
			r.bad = true
			return 0
		}
	}
	if r.bad {
		return 0
	}
	return (1<<zeros - 1) + r.u(zeros)
}

// se reads a signed Exp-Golomb code (section 9.1.1).
func (r *bitReader) se() int64 {
	k := int64(r.ue())
	if k%2 == 1 {
		return (k + 1) / 2
	}
	return -k / 2
}

// uvlc reads AV1's variable length code (section 4.10.3); only its length
// matters here.
func (r *bitReader) uvlc() {
	zeros := 0
	for !r.bad && r.u(1) == 0 {
		zeros++
		if zeros >= 32 {
			r.bad = true
			return
		}
	}
	r.u(zeros)
}

// skipScalingList reads past scaling_list (section 7.3.2.1.1.1).
func (r *bitReader) skipScalingList(size int) {
	last, next := int32(8), int32(8)
	for range size {
		if next != 0 {
			d := int32(r.se())
			next = (last + d + 256) % 256
		}
		if next != 0 {
			last = next
		}
		if r.bad {
			return
		}
	}
}
