package sipgw

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// maxEarlyTags bounds the early dialogs (To-tags of provisional answers,
// RFC 3261 section 12.1) one call keeps before its 2xx: a forking server
// makes a few, a hostile one must not grow the call without bound.
const maxEarlyTags = 4

// call is one dialog the gateway proxies (RFC 3261 section 12). Its
// identity is the Call-ID, both tags and the outside party's signaling
// address and transport as seen when the dialog formed: an in-dialog request
// that does not carry all of them is not the dialog's (481), however well it
// guesses the Call-ID.
type call struct {
	id            string
	callerOutside bool
	inside        string // signaling address of the inside party
	// share is the source whose share of the inside port pool this call
	// uses (an outside caller's address, IPv6 by /64); invalid when the
	// caller is inside, whose calls are not limited.
	share netip.Prefix

	mu sync.Mutex // guards everything below
	// outside and outsideTr are the outside party's signaling address and
	// transport: the INVITE's source for an outside caller, the 2xx's for
	// an outside callee.
	outside    netip.AddrPort
	outsideTr  string
	callerTag  string   // From-tag of the initial INVITE
	calleeTags []string // To-tags of early dialogs; the one of the 2xx once answered
	answered   bool     // a 2xx to the initial INVITE was relayed
	acked      bool     // and its ACK arrived
	ended      bool
	streams    map[uint8]bool // stream indexes this call holds at the media proxy
	pending    *offer         // an in-dialog offer waiting for its 2xx
	timer      *time.Timer    // the setup deadline, then the ACK deadline
	expired    chan struct{}  // closed when the setup deadline passes unanswered
	invite     *sip.Request   // the initial INVITE as the caller sent it
	answer     *sip.Response  // its 2xx as the callee sent it (top Via removed)
}

func newCall(id string, callerOutside bool, outside netip.AddrPort, transport, inside, callerTag string) *call {
	return &call{
		id: id, callerOutside: callerOutside, outside: outside, outsideTr: strings.ToUpper(transport),
		inside: inside, callerTag: callerTag, streams: map[uint8]bool{}, expired: make(chan struct{}),
	}
}

func fromTag(m interface{ From() *sip.FromHeader }) string {
	if f := m.From(); f != nil {
		t, _ := f.Params.Get("tag")
		return t
	}
	return ""
}

func toTagOf(m interface{ To() *sip.ToHeader }) string {
	if t := m.To(); t != nil {
		v, _ := t.Params.Get("tag")
		return v
	}
	return ""
}

// matches says whether a request from src over transport with these tags
// belongs to the dialog. An outside sender must be the outside party at
// the address and transport the dialog formed with; the tags must be the
// caller's and the callee's, in the order the sender's side writes them.
func (c *call) matches(from, to string, src netip.AddrPort, transport string, inside bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return false
	}
	if !inside && (src != c.outside || !strings.EqualFold(transport, c.outsideTr)) {
		return false
	}
	if inside == c.callerOutside { // the sender is the callee's side
		from, to = to, from
	}
	return from == c.callerTag && to != "" && slices.Contains(c.calleeTags, to)
}

// early records the To-tag of a provisional answer to the initial INVITE.
func (c *call) early(tag string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tag != "" && !c.answered && !slices.Contains(c.calleeTags, tag) && len(c.calleeTags) < maxEarlyTags {
		c.calleeTags = append(c.calleeTags, tag)
	}
}

// confirm records the 2xx that formed the dialog: its To-tag is the only
// callee tag from now on, and for an outside callee its source is the
// outside party's address.
func (c *call) confirm(tag string, src netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answered = true
	c.calleeTags = append(c.calleeTags[:0], tag)
	if !c.callerOutside && src.IsValid() {
		c.outside, c.outsideTr = src, "UDP"
	}
}

// outsideAddr is where requests for the outside party go.
func (c *call) outsideAddr() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.outside
}

// offer is the media change an in-dialog SDP offer (re-INVITE, UPDATE)
// asks for. The streams it needs are allocated when it passes (their ports
// go into the rewritten SDP), but endpoints and SSRCs change only on the
// other side's 2xx (commit); a failure removes what it allocated (discard).
type offer struct {
	apply   []mediaproxy.Descriptor // upserts with endpoints, for commit
	remove  []uint8                 // streams the offer disables, for commit
	created []uint8                 // streams allocated for it, for discard
}

// armTimer (re)starts the call's deadline: the setup deadline from its
// INVITE, then the ACK deadline from its 2xx. When it passes before the ACK,
// an unanswered call is cancelled (the forwarding loop sees c.expired) and
// an answered one is hung up.
func (g *Gateway) armTimer(c *call, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || c.acked {
		return
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timer = time.AfterFunc(d, func() { g.deadline(c) })
}

func (g *Gateway) deadline(c *call) {
	c.mu.Lock()
	if c.ended || c.acked {
		c.mu.Unlock()
		return
	}
	answered := c.answered
	if !answered {
		select {
		case <-c.expired:
		default:
			close(c.expired)
		}
	}
	c.mu.Unlock()
	if answered {
		g.c.SetupTimeouts.Add(1)
		g.hangUp(c, "ACK timeout")
	}
}

func (c *call) stopTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
}

// ack records the caller's ACK of the 2xx: the call is set up.
func (c *call) ack() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answered && !c.acked {
		c.acked = true
		if c.timer != nil {
			c.timer.Stop()
		}
	}
}

// release forgets c and gives its media back, without counting it as a
// call (one refused before it started). It reports whether c was held.
func (g *Gateway) release(c *call) bool {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return false
	}
	c.ended = true
	if c.timer != nil {
		c.timer.Stop()
	}
	n := len(c.streams)
	clear(c.streams)
	c.pending = nil
	c.mu.Unlock()
	g.mu.Lock()
	if g.calls[c.id] == c {
		delete(g.calls, c.id)
	}
	g.mu.Unlock()
	_ = g.mp.DeleteCall(c.id)
	g.unreserve(c.share, n)
	return true
}

// endCall ends a started call; it reports whether this ended it.
func (g *Gateway) endCall(c *call) bool {
	if !g.release(c) {
		return false
	}
	g.c.CallsEnded.Add(1)
	return true
}

// rewrite takes one SDP for the media proxy and rewrites it for the other
// side; fromInside says which side wrote it. With stage unset it applies at
// once (an initial offer, an answer); with stage set it returns the offer
// to commit on the other side's 2xx. New streams count against the call's
// share of the pool either way.
func (g *Gateway) rewrite(c *call, body []byte, fromInside, stage bool) ([]byte, *offer, error) {
	sd, ss, err := parseSDP(body)
	if err != nil {
		return nil, nil, err
	}
	// Every address an outside party names passes the media proxy's
	// destination policy first (outsideMedia); a refused offer changes
	// nothing.
	var eps []endpoints
	if !fromInside {
		c.mu.Lock()
		sig := c.outside.Addr().Unmap()
		c.mu.Unlock()
		if eps, err = outsideMedia(g.mp, sig, ss); err != nil {
			return nil, nil, err
		}
	}
	fresh, err := g.hold(c, ss)
	if err != nil {
		return nil, nil, err
	}
	var of *offer
	if stage {
		of = &offer{created: fresh}
	}
	pp, err := g.applyStreams(c, ss, eps, fromInside, of)
	if err != nil {
		if stage {
			g.discard(c, of)
		} else {
			g.unhold(c, fresh)
		}
		return nil, nil, err
	}
	ip := g.mp.InsideIP()
	if fromInside {
		ip = g.outIP
	}
	out, err := rewriteSDP(sd, ss, ip, pp)
	if err != nil && stage {
		g.discard(c, of)
	}
	return out, of, err
}

// hold marks the SDP's streams the call does not hold yet as its own and
// counts them against its source's share; it returns their indexes.
func (g *Gateway) hold(c *call, ss []stream) ([]uint8, error) {
	var fresh []uint8
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return nil, ErrEnded
	}
	for _, s := range ss {
		if i := uint8(s.index); !s.disabled && !c.streams[i] {
			c.streams[i] = true
			fresh = append(fresh, i)
		}
	}
	c.mu.Unlock()
	if !g.reserve(c.share, len(fresh)) {
		c.mu.Lock()
		for _, i := range fresh {
			delete(c.streams, i)
		}
		c.mu.Unlock()
		return nil, ErrSourceStreams
	}
	return fresh, nil
}

// applyStreams hands each stream of the SDP to the media proxy and returns
// the ports to write into the rewritten SDP. With of set, only the
// streams' ports are taken now: their endpoints and SSRC, and the removal
// of disabled streams, are staged in of for the 2xx.
func (g *Gateway) applyStreams(c *call, ss []stream, eps []endpoints, fromInside bool, of *offer) ([]ports, error) {
	flags := mediaproxy.FlagCalleeOutside
	if c.callerOutside {
		flags = mediaproxy.FlagCallerOutside
	}
	pp := make([]ports, len(ss))
	for i, s := range ss {
		idx := uint8(s.index)
		if s.disabled {
			if of != nil {
				of.remove = append(of.remove, idx)
			} else {
				g.dropStream(c, idx)
			}
			continue
		}
		d := mediaproxy.Descriptor{Op: mediaproxy.OpUpsert, Flags: flags, Kind: s.kind, Index: idx, CallID: c.id}
		now := d
		if fromInside {
			d.Server, d.ServerRTCP = s.rtp, s.rtcp
		} else {
			// Checked against the destination policy (outsideMedia).
			d.Client, d.ClientRTCP = eps[i].rtp, eps[i].rtcp
			if s.hasSSRC {
				d.Flags |= mediaproxy.FlagSSRC
				d.SSRC = s.ssrc
			}
		}
		if of != nil {
			of.apply = append(of.apply, d)
		} else {
			now = d
		}
		r, err := g.mp.Apply(&now)
		if err != nil {
			return nil, err
		}
		if fromInside {
			pp[i] = ports{r.FixedRTP, r.FixedRTCP}
		} else {
			pp[i] = ports{r.InsideRTP, r.InsideRTCP}
		}
	}
	return pp, nil
}

// unhold gives back the share of those of idx the media proxy does not
// hold (their allocation failed or never happened).
func (g *Gateway) unhold(c *call, idx []uint8) {
	n := 0
	c.mu.Lock()
	for _, i := range idx {
		if !c.streams[i] {
			continue
		}
		if _, err := g.mp.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpQuery, CallID: c.id, Index: i}); err == nil {
			continue
		}
		delete(c.streams, i)
		n++
	}
	c.mu.Unlock()
	g.unreserve(c.share, n)
}

// dropStream removes one of the call's streams.
func (g *Gateway) dropStream(c *call, idx uint8) {
	_, _ = g.mp.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpDelete, CallID: c.id, Index: idx})
	c.mu.Lock()
	held := c.streams[idx]
	delete(c.streams, idx)
	c.mu.Unlock()
	if held {
		g.unreserve(c.share, 1)
	}
}

// commit applies a staged offer the other side accepted.
func (g *Gateway) commit(c *call, of *offer) {
	c.mu.Lock()
	c.pending = nil
	ended := c.ended
	c.mu.Unlock()
	if ended {
		return
	}
	for i := range of.apply {
		if _, err := g.mp.Apply(&of.apply[i]); err != nil {
			g.log.Warn("offer not applied", "call", c.id, "stream", of.apply[i].Index, "err", err)
		}
	}
	for _, idx := range of.remove {
		g.dropStream(c, idx)
	}
}

// discard drops a staged offer the other side refused (or never answered):
// the streams allocated for it go, and nothing else changed.
func (g *Gateway) discard(c *call, of *offer) {
	c.mu.Lock()
	c.pending = nil
	c.mu.Unlock()
	for _, idx := range of.created {
		g.dropStream(c, idx)
	}
}

// MediaTimeout forgets a call whose media stopped and sends BYE to both
// parties of an established one. New registers it with the media proxy
// (mediaproxy.Proxy.SetOnTimeout).
func (g *Gateway) MediaTimeout(callID string) {
	if c := g.callByID(callID); c != nil {
		g.hangUp(c, "media timeout")
	}
}

// hangUp ends a call on the gateway's own account (media or ACK timeout):
// it releases the call and sends BYE to both parties of an answered one.
func (g *Gateway) hangUp(c *call, why string) {
	if !g.endCall(c) {
		return
	}
	c.mu.Lock()
	inv, ans := c.invite, c.answer
	outside := c.outside.String()
	c.mu.Unlock()
	if inv == nil || ans == nil || ans.Contact() == nil || inv.Contact() == nil {
		return
	}
	caller, callee := outside, c.inside
	if !c.callerOutside {
		caller, callee = c.inside, outside
	}
	// To the callee: as if from the caller, CSeq above anything it sent.
	toCallee := g.bye(ans.Contact().Address, inv.From(), ans.To(), inv.CallID(), inv.CSeq().SeqNo+10000, why)
	// To the caller: as if from the callee.
	from, to := ans.To().AsFrom(), inv.From().AsTo()
	toCaller := g.bye(inv.Contact().Address, &from, &to, inv.CallID(), 1<<30, why)
	g.spawn(func(ctx context.Context) {
		for _, x := range []struct {
			req  *sip.Request
			dest string
		}{{toCallee, callee}, {toCaller, caller}} {
			x.req.SetDestination(x.dest)
			if _, err := g.client.Do(ctx, x.req, g.fromListener, sipgo.ClientRequestAddVia); err != nil {
				g.log.Debug("BYE on "+why, "call", c.id, "err", err)
			}
		}
	})
}

func (g *Gateway) bye(target sip.Uri, from *sip.FromHeader, to *sip.ToHeader, id *sip.CallIDHeader, seq uint32, why string) *sip.Request {
	r := sip.NewRequest(sip.BYE, *target.Clone())
	r.AppendHeader(sip.HeaderClone(from))
	r.AppendHeader(sip.HeaderClone(to))
	r.AppendHeader(sip.HeaderClone(id))
	r.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: sip.BYE})
	mf := sip.MaxForwardsHeader(70)
	r.AppendHeader(&mf)
	r.AppendHeader(sip.NewHeader("Reason", `SIP;cause=408;text="`+why+`"`))
	r.SetTransport("UDP")
	return r
}

// callByID returns the call with this Call-ID, or nil.
func (g *Gateway) callByID(id string) *call {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[id]
}

// peerOf is where a request of the call goes: to the outside party when it
// comes from inside, else to the inside one.
func (c *call) peerOf(fromInside bool) string {
	if fromInside {
		return c.outsideAddr().String()
	}
	return c.inside
}
