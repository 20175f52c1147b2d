// Package rtpfeedback generates the receive-side RTCP feedback of one
// peer connection for every RTP packet it receives, whichever path the
// packet took: pion's interceptor chain (the Interceptor is a pion
// interceptor.Interceptor) or a read loop of the caller's own that skips
// pion (Interceptor.Receive). Both feed the same per-SSRC state.
//
//   - NACK (RFC 4585 section 6.2.1, generic NACK): per SSRC with nack
//     feedback negotiated, a bitmap of the last 512 sequence numbers; every
//     100 ms the missing ones are sent as rtcp.TransportLayerNack pairs,
//     as pion's nack generator does with its defaults (no newest packets
//     skipped, no limit on NACKs per packet; both are options).
//   - Receiver reports (RFC 3550 section 6.4.2): every second one RR with a
//     report block per SSRC heard from in the last 8 s: extended highest
//     sequence number, cumulative and fractional loss (appendix A.3),
//     interarrival jitter in the stream's clock rate (appendix A.8), and
//     LSR/DLSR from the last sender report seen on the SSRC.
//   - Transport-wide congestion control feedback
//     (draft-holmer-rmcat-transport-wide-cc-extensions-01): every 100 ms,
//     when packets carrying the transport-cc header extension arrived,
//     the feedback pion's twcc.Recorder builds from their arrival times.
//
// Receive and the bound RTP reader take one mutex per packet and do not
// allocate; the one goroutine of an Interceptor (started when pion binds
// its RTCP writer, stopped by Close) builds and sends the feedback,
// through the writer pion binds or the caller's (WithWriter). A writer
// that is a CompoundWriter gets each write already marshalled.
package rtpfeedback

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/twcc"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
)

// Defaults: pion's nack generator, report receiver and twcc sender
// intervals.
const (
	DefaultNACKInterval   = 100 * time.Millisecond
	DefaultReportInterval = time.Second
	DefaultTWCCInterval   = 100 * time.Millisecond
)

// maxPending bounds the transport-cc arrivals queued between two TWCC
// ticks (16 bytes each): past it arrivals are dropped and counted
// (Stats.TWCCDropped), which only a peer connection receiving over
// 300,000 packets/s could reach.
const maxPending = 1 << 15

// maxRTCPBatch is the most RTCP bytes sent in one write (one SRTCP
// datagram): below a 1500-byte MTU with room for SRTCP's trailer.
const maxRTCPBatch = 1200

// Option configures an Interceptor.
type Option func(*Interceptor) error

// NACKInterval sets how often NACKs are sent (default 100 ms).
func NACKInterval(d time.Duration) Option {
	return func(i *Interceptor) error {
		if d <= 0 {
			return ErrInterval
		}
		i.nackInterval = d
		return nil
	}
}

// NACKSkipLastN leaves the newest n-1 sequence numbers out of the NACKs
// (pion's GeneratorSkipLastN; default 0, pion's default): a packet merely
// reordered is then not NACKed at once.
func NACKSkipLastN(n uint16) Option {
	return func(i *Interceptor) error {
		if n >= logSize {
			return ErrSkipLastN
		}
		i.skipLastN = n
		return nil
	}
}

// NACKMaxPerPacket limits how often one missing packet is NACKed (pion's
// GeneratorMaxNacksPerPacket; default 0, pion's default: until it
// arrives or leaves the 512-packet window).
func NACKMaxPerPacket(n uint16) Option {
	return func(i *Interceptor) error {
		if n > 255 {
			return ErrMaxNACKs
		}
		i.maxNACKs = uint8(n)
		return nil
	}
}

// ReportInterval sets how often receiver reports are sent (default 1 s).
func ReportInterval(d time.Duration) Option {
	return func(i *Interceptor) error {
		if d <= 0 {
			return ErrInterval
		}
		i.reportInterval = d
		return nil
	}
}

// TWCCInterval sets how often transport-wide feedback is sent (default
// 100 ms).
func TWCCInterval(d time.Duration) Option {
	return func(i *Interceptor) error {
		if d <= 0 {
			return ErrInterval
		}
		i.twccInterval = d
		return nil
	}
}

// Stats are an Interceptor's counters, or a node's (Counters).
type Stats struct {
	Packets      uint64 // RTP packets recorded, both paths (an Interceptor's only)
	UnknownSSRC  uint64 // packets of no bound stream (TWCC only)
	BadRTP       uint64 // packets the bound reader could not parse
	BadRTCP      uint64 // RTCP packets the sender report scan refused
	NACKs        uint64 // NACK packets sent
	NACKed       uint64 // sequence numbers NACKed
	Reports      uint64 // RR packets sent
	TWCC         uint64 // TWCC feedback packets sent
	TWCCDropped  uint64 // transport-cc arrivals dropped (queue full)
	WriteErrors  uint64 // RTCP writes that failed
	SenderReport uint64 // sender reports seen
}

type counter int

const (
	cPackets counter = iota
	cUnknown
	cBadRTP
	cBadRTCP
	cNACKs
	cNACKed
	cReports
	cTWCC
	cTWCCDropped
	cWriteErrors
	cSenderReports
	nCounters
)

// Counters add up the Stats of many Interceptors (WithCounters), e.g. a
// node's for its metrics. The zero value is ready. Packets is not summed
// (one shared atomic per packet across cores costs more than it tells).
type Counters struct{ v [nCounters]atomic.Uint64 }

// Stats returns the counters' values.
func (c *Counters) Stats() Stats {
	return Stats{
		Packets: c.v[cPackets].Load(), UnknownSSRC: c.v[cUnknown].Load(), BadRTP: c.v[cBadRTP].Load(),
		BadRTCP: c.v[cBadRTCP].Load(), NACKs: c.v[cNACKs].Load(), NACKed: c.v[cNACKed].Load(),
		Reports: c.v[cReports].Load(), TWCC: c.v[cTWCC].Load(), TWCCDropped: c.v[cTWCCDropped].Load(),
		WriteErrors: c.v[cWriteErrors].Load(), SenderReport: c.v[cSenderReports].Load(),
	}
}

// WithCounters adds the Interceptor's events to c as well as to its own
// Stats.
func WithCounters(c *Counters) Option {
	return func(i *Interceptor) error {
		i.node = c
		return nil
	}
}

// WithWriter sends the feedback through w instead of the RTCP writer pion
// binds, e.g. a writer with an SRTCP context and socket of the caller's
// own that skips pion's write chain; the goroutine still starts when pion
// binds its writer. w must be safe for use from that goroutine.
func WithWriter(w interceptor.RTCPWriter) Option {
	return func(i *Interceptor) error {
		i.writer = w
		return nil
	}
}

// CompoundWriter is an RTCP writer that also takes its packets marshalled.
// When the Interceptor's writer (pion's or WithWriter's) is one, each
// write's packets are marshalled into a buffer the Interceptor reuses and
// handed to WriteCompound as one compound RTCP packet (RFC 3550 section
// 6.1) of at most MaxCompound bytes, unless one packet alone is longer.
type CompoundWriter interface {
	interceptor.RTCPWriter
	// WriteCompound sends the compound packet b; b is reused once it
	// returns. taken false means the writer did not take it (its own path
	// does not apply to the peer connection): the Interceptor then gives
	// the same packets to Write. err is a failed send of a taken packet.
	WriteCompound(b []byte) (taken bool, err error)
}

// MaxCompound is the most bytes of RTCP the Interceptor sends in one
// write: one SRTCP datagram below a 1500-byte MTU with room for SRTCP's
// trailer.
const MaxCompound = maxRTCPBatch

// arrival is one transport-cc sequence number and when it arrived.
type arrival struct {
	at   int64 // unix ns
	ssrc uint32
	seq  uint16
}

// Interceptor is the receive-side feedback of one peer connection. Make
// one per peer connection: with New and Factory when the caller needs the
// instance, or through NewFactory in pion's registry.
type Interceptor struct {
	interceptor.NoOp

	nackInterval, reportInterval, twccInterval time.Duration
	skipLastN                                  uint16
	maxNACKs                                   uint8

	senderSSRC uint32
	start      int64                  // unix ns: TWCC arrival times count from here
	writer     interceptor.RTCPWriter // WithWriter's, nil: pion's

	mu      sync.Mutex // guards everything below up to the next blank line
	streams map[uint32]*stream
	twccID  uint8      // the peer connection's transport-cc extension id
	hdr     rtp.Header // the bound readers' parse buffer
	pending []arrival  // transport-cc arrivals since the last TWCC tick
	missing []uint16   // NACK scratch

	// The loop's alone: the recorder, and the arrival buffer it drains
	// while Receive fills pending (the two are swapped every TWCC tick).
	recorder *twcc.Recorder
	spare    []arrival
	out      []byte // marshalled feedback for a CompoundWriter

	bindOnce  sync.Once
	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup

	own  Counters
	node *Counters // nil: none
}

// add counts n events of kind k.
func (i *Interceptor) add(k counter, n uint64) {
	i.own.v[k].Add(n)
	if i.node != nil && k != cPackets {
		i.node.v[k].Add(n)
	}
}

// New returns an Interceptor. Its goroutine starts when pion binds its
// RTCP writer; Close stops it.
func New(opts ...Option) (*Interceptor, error) {
	i := &Interceptor{
		nackInterval:   DefaultNACKInterval,
		reportInterval: DefaultReportInterval,
		twccInterval:   DefaultTWCCInterval,
		senderSSRC:     rand.Uint32(),
		start:          time.Now().UnixNano(),
		streams:        map[uint32]*stream{},
		pending:        make([]arrival, 0, 256),
		spare:          make([]arrival, 0, 256),
		missing:        make([]uint16, 0, logSize),
		out:            make([]byte, 0, maxRTCPBatch),
		done:           make(chan struct{}),
	}
	for _, o := range opts {
		if err := o(i); err != nil {
			return nil, err
		}
	}
	i.recorder = twcc.NewRecorder(i.senderSSRC)
	return i, nil
}

// Factory makes an Interceptor per peer connection for pion's registry.
type Factory struct{ opts []Option }

// NewFactory returns a Factory whose interceptors take opts.
func NewFactory(opts ...Option) (*Factory, error) {
	if _, err := New(opts...); err != nil {
		return nil, err
	}
	return &Factory{opts: opts}, nil
}

// NewInterceptor implements interceptor.Factory.
func (f *Factory) NewInterceptor(string) (interceptor.Interceptor, error) { return New(f.opts...) }

// Factory returns an interceptor.Factory that hands out i itself: put it
// in the registry of the one peer connection i belongs to.
func (i *Interceptor) Factory() interceptor.Factory { return instance{i} }

type instance struct{ i *Interceptor }

func (f instance) NewInterceptor(string) (interceptor.Interceptor, error) { return f.i, nil }

// Stats returns the Interceptor's counters.
func (i *Interceptor) Stats() Stats { return i.own.Stats() }

// AddStream declares a stream as pion's BindRemoteStream does, for a
// stream whose packets only ever take the caller's own path. A stream
// already known keeps its counters.
func (i *Interceptor) AddStream(info *interceptor.StreamInfo) {
	nack := false
	for _, fb := range info.RTCPFeedback {
		if fb.Type == "nack" && fb.Parameter == "" {
			nack = true
		}
	}
	var id uint8
	for _, e := range info.RTPHeaderExtensions {
		if e.URI == sdp.TransportCCURI && e.ID > 0 && e.ID < 256 {
			id = uint8(e.ID)
		}
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	s := i.streams[info.SSRC]
	if s == nil {
		s = &stream{ssrc: info.SSRC}
		i.streams[info.SSRC] = s
	}
	s.clock, s.nack, s.twccID = info.ClockRate, nack, id
	if id != 0 {
		i.twccID = id
	}
}

// BindRemoteStream implements interceptor.Interceptor: every packet read
// through the returned reader is recorded.
func (i *Interceptor) BindRemoteStream(info *interceptor.StreamInfo, reader interceptor.RTPReader) interceptor.RTPReader {
	i.AddStream(info)
	return interceptor.RTPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := reader.Read(b, a)
		if err != nil {
			return n, a, err
		}
		now := time.Now().UnixNano()
		i.mu.Lock()
		if _, perr := i.hdr.Unmarshal(b[:n]); perr != nil {
			i.mu.Unlock()
			i.add(cBadRTP, 1)
			return n, a, nil
		}
		i.receiveLocked(&i.hdr, now)
		i.mu.Unlock()
		return n, a, nil
	})
}

// UnbindRemoteStream implements interceptor.Interceptor: the stream is
// forgotten.
func (i *Interceptor) UnbindRemoteStream(info *interceptor.StreamInfo) {
	i.mu.Lock()
	delete(i.streams, info.SSRC)
	i.mu.Unlock()
}

// Receive records one RTP packet that arrived at arrival (unix nanoseconds) and did not pass
// through pion's interceptor chain. Safe for concurrent use; no allocation.
func (i *Interceptor) Receive(h *rtp.Header, arrival int64) {
	i.mu.Lock()
	i.receiveLocked(h, arrival)
	i.mu.Unlock()
}

func (i *Interceptor) receiveLocked(h *rtp.Header, at int64) {
	i.add(cPackets, 1)
	s := i.streams[h.SSRC]
	id := i.twccID
	if s != nil && s.twccID != 0 {
		id = s.twccID
	}
	if id != 0 {
		if ext := h.GetExtension(id); len(ext) >= 2 {
			var tcc rtp.TransportCCExtension
			if tcc.Unmarshal(ext) == nil {
				if len(i.pending) < maxPending {
					i.pending = append(i.pending, arrival{at: at, ssrc: h.SSRC, seq: tcc.TransportSequence})
				} else {
					i.add(cTWCCDropped, 1)
				}
			}
		}
	}
	if s == nil {
		i.add(cUnknown, 1)
		return
	}
	s.update(h.SequenceNumber, h.Timestamp, at)
}

// BindRTCPReader implements interceptor.Interceptor: sender reports in
// the incoming RTCP give the receiver reports their LSR and DLSR.
func (i *Interceptor) BindRTCPReader(reader interceptor.RTCPReader) interceptor.RTCPReader {
	return interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := reader.Read(b, a)
		if err != nil {
			return n, a, err
		}
		i.ReceiveRTCP(b[:n], time.Now().UnixNano())
		return n, a, nil
	})
}

// ReceiveRTCP records the sender reports of a compound RTCP packet that
// arrived at arrival (unix nanoseconds), for a caller that reads RTCP
// outside pion's chain. No allocation.
func (i *Interceptor) ReceiveRTCP(b []byte, arrival int64) {
	for {
		ssrc, ntp, rest, ok, err := nextSenderReport(b)
		if err != nil {
			i.add(cBadRTCP, 1)
			return
		}
		if !ok {
			return
		}
		b = rest
		i.add(cSenderReports, 1)
		i.mu.Lock()
		if s := i.streams[ssrc]; s != nil {
			s.lsr, s.lsrAt = uint32(ntp>>16), arrival
		}
		i.mu.Unlock()
	}
}

// BindRTCPWriter implements interceptor.Interceptor: feedback is sent
// through writer from the Interceptor's goroutine, started here once.
func (i *Interceptor) BindRTCPWriter(writer interceptor.RTCPWriter) interceptor.RTCPWriter {
	i.bindOnce.Do(func() {
		select {
		case <-i.done:
			return // closed before bound
		default:
		}
		w := writer
		if i.writer != nil {
			w = i.writer
		}
		i.wg.Add(1)
		go i.loop(w)
	})
	return writer
}

// Close implements interceptor.Interceptor: it stops the goroutine and
// waits for it. Idempotent. Receive may still be called after it.
func (i *Interceptor) Close() error {
	i.closeOnce.Do(func() { close(i.done) })
	i.bindOnce.Do(func() {}) // no goroutine after Close
	i.wg.Wait()
	return nil
}

// loop sends the feedback that is due every tick.
func (i *Interceptor) loop(w interceptor.RTCPWriter) {
	defer i.wg.Done()
	tick := min(i.nackInterval, i.reportInterval, i.twccInterval)
	t := time.NewTicker(tick)
	defer t.Stop()
	now := time.Now()
	nextNACK, nextReport, nextTWCC := now.Add(i.nackInterval), now.Add(i.reportInterval), now.Add(i.twccInterval)
	var pkts []rtcp.Packet
	for {
		select {
		case <-i.done:
			return
		case <-t.C:
		}
		// The time now, not the tick's: a late wake-up must not shorten
		// the DLSR of the reports (the sender's RTT would grow by it).
		now = time.Now()
		pkts = pkts[:0]
		// Due a little early rather than a tick late.
		soon := now.Add(tick / 2)
		if !soon.Before(nextReport) {
			nextReport = nextReport.Add(i.reportInterval)
			if rr := i.buildReports(now.UnixNano()); len(rr) > 0 {
				pkts = append(pkts, rr...)
				i.add(cReports, uint64(len(rr)))
			}
		}
		if !soon.Before(nextTWCC) {
			nextTWCC = nextTWCC.Add(i.twccInterval)
			fb := i.buildTWCC()
			pkts = append(pkts, fb...)
			i.add(cTWCC, uint64(len(fb)))
		}
		if !soon.Before(nextNACK) {
			nextNACK = nextNACK.Add(i.nackInterval)
			pkts = append(pkts, i.buildNACKs()...)
		}
		if now.Sub(nextNACK) > time.Second || now.Sub(nextReport) > time.Second || now.Sub(nextTWCC) > time.Second {
			// Far behind (a stalled process): no burst to catch up.
			nextNACK, nextReport, nextTWCC = now.Add(i.nackInterval), now.Add(i.reportInterval), now.Add(i.twccInterval)
		}
		i.write(w, pkts)
		clear(pkts)
	}
}

// write sends pkts in as few writes as fit maxRTCPBatch bytes each.
func (i *Interceptor) write(w interceptor.RTCPWriter, pkts []rtcp.Packet) {
	cw, _ := w.(CompoundWriter)
	for len(pkts) > 0 {
		n, size := 0, 0
		for n < len(pkts) {
			m := pkts[n].MarshalSize()
			if n > 0 && size+m > maxRTCPBatch {
				break
			}
			size += m
			n++
		}
		if err := i.writeOne(w, cw, pkts[:n]); err != nil {
			i.add(cWriteErrors, 1)
		}
		pkts = pkts[n:]
	}
}

// writeOne sends pkts in one write: marshalled to cw when there is one
// and it takes them, else to w.
func (i *Interceptor) writeOne(w interceptor.RTCPWriter, cw CompoundWriter, pkts []rtcp.Packet) error {
	if cw != nil {
		var err error
		if i.out, err = AppendCompound(i.out[:0], pkts); err != nil {
			return err
		}
		if taken, err := cw.WriteCompound(i.out); taken {
			return err
		}
	}
	_, err := w.Write(pkts, nil)
	return err
}

// AppendCompound appends the compound RTCP packet of pkts (RFC 3550
// section 6.1: the packets back to back) to b, exactly as pion's
// rtcp.Marshal would marshal them. Receiver reports and generic NACKs,
// the feedback sent most, are appended without allocating (rtcp.go).
func AppendCompound(b []byte, pkts []rtcp.Packet) ([]byte, error) {
	for _, p := range pkts {
		if nb, ok := appendPacket(b, p); ok {
			b = nb
			continue
		}
		raw, err := p.Marshal()
		if err != nil {
			return b, err
		}
		b = append(b, raw...)
	}
	return b, nil
}

// buildTWCC records the arrivals queued since the last call and returns
// the transport-wide feedback for them, nil when none arrived.
func (i *Interceptor) buildTWCC() []rtcp.Packet {
	i.mu.Lock()
	batch := i.pending
	i.pending = i.spare[:0]
	i.mu.Unlock()
	i.spare = batch[:0]
	if len(batch) == 0 {
		return nil
	}
	for _, a := range batch {
		us := max(a.at-i.start, 0) / 1000
		i.recorder.Record(a.ssrc, a.seq, us)
	}
	return i.recorder.BuildFeedbackPacket()
}

// buildNACKs returns one NACK per stream with packets missing.
func (i *Interceptor) buildNACKs() []rtcp.Packet {
	var out []rtcp.Packet
	i.mu.Lock()
	defer i.mu.Unlock()
	for ssrc, s := range i.streams {
		if !s.nack {
			continue
		}
		missing := s.log.missing(i.skipLastN, i.missing)
		if i.maxNACKs > 0 {
			kept := missing[:0]
			for _, seq := range missing {
				c := &s.log.counts[seq%logSize]
				if *c < i.maxNACKs {
					kept = append(kept, seq)
				}
				if *c < 255 {
					*c++
				}
			}
			missing = kept
		}
		if len(missing) == 0 {
			continue
		}
		out = append(out, &rtcp.TransportLayerNack{
			SenderSSRC: i.senderSSRC,
			MediaSSRC:  ssrc,
			Nacks:      rtcp.NackPairsFromSequenceNumbers(missing),
		})
		i.add(cNACKs, 1)
		i.add(cNACKed, uint64(len(missing)))
	}
	return out
}

// buildReports returns the receiver reports at now (unix ns): one RR per
// 31 streams heard from in the last activeFor (RFC 3550 section 6.4.2).
func (i *Interceptor) buildReports(now int64) []rtcp.Packet {
	i.mu.Lock()
	defer i.mu.Unlock()
	var out []rtcp.Packet
	var rr *rtcp.ReceiverReport
	for _, s := range i.streams {
		if !s.started || now-s.lastArrival > int64(activeFor) {
			continue
		}
		if rr == nil || len(rr.Reports) == 31 {
			rr = &rtcp.ReceiverReport{SSRC: i.senderSSRC}
			out = append(out, rr)
		}
		rr.Reports = append(rr.Reports, s.report(now))
	}
	return out
}
