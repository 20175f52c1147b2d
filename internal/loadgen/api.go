package loadgen

import (
	"net"
	"net/netip"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// NewAPI returns the pion API load clients use: default codecs, the
// simulcast header extensions, and no per-packet interceptors (a load
// client must stay cheap) unless WithFeedback. Clients gather host
// candidates on loopback only, or only on ip when it is valid.
func NewAPI(tcp bool, ip netip.Addr, opts ...APIOption) (*webrtc.API, error) {
	var o apiOptions
	for _, f := range opts {
		f(&o)
	}
	return newAPI(tcp, ip, false, o)
}

// NewDuplicateTolerantAPI is NewAPI with SRTP replay protection off, for
// tests that check a retransmission of a packet the client already has.
func NewDuplicateTolerantAPI() (*webrtc.API, error) {
	return newAPI(false, netip.Addr{}, true, apiOptions{})
}

// APIOption changes what the clients of NewAPI do.
type APIOption func(*apiOptions)

type apiOptions struct {
	feedback bool
	mux      ice.UDPMux
}

// WithUDPMux makes every client of the API gather its one UDP host
// candidate on mux (shared by the clients, told apart by ICE ufrag):
// a socket the caller opened, for example inside a network namespace
// (netlab.Node.ListenUDP), with the API's address filter still applied.
func WithUDPMux(mux ice.UDPMux) APIOption { return func(o *apiOptions) { o.mux = mux } }

// WithFeedback(true) makes the clients behave like browsers on RTCP:
// pion's NACK generator and responder (RFC 4585 generic NACK, nack and
// nack pli negotiated for video), sender and receiver reports (RFC 3550
// section 6.4), transport-wide sequence numbers on every packet they send
// and transport-cc feedback on what they receive
// (draft-holmer-rmcat-transport-wide-cc-extensions-01), the header
// extension and feedback negotiated for audio and video. That is
// webrtc.RegisterDefaultInterceptors plus the TWCC header extension
// sender, which browsers run and pion's defaults leave out, minus pion's
// stats interceptor, which only feeds GetStats and sends nothing. The
// interceptors belong to the API (pion builds them per peer connection
// from its registry), so this is an API option rather than a
// ClientConfig field.
func WithFeedback(on bool) APIOption { return func(o *apiOptions) { o.feedback = on } }

func newAPI(tcp bool, ip netip.Addr, noReplay bool, o apiOptions) (*webrtc.API, error) {
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	if err := webrtc.ConfigureSimulcastExtensionHeaders(me); err != nil {
		return nil, err
	}
	if err := me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	ir := &interceptor.Registry{}
	if o.feedback {
		if err := registerFeedback(me, ir); err != nil {
			return nil, err
		}
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetSRTPReplayProtectionWindow(srtpReplayWindow)
	se.DisableSRTPReplayProtection(noReplay) // after: the window turns it on
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIPFilter(func(a net.IP) bool {
		if ip.IsValid() {
			b, ok := netip.AddrFromSlice(a)
			return ok && b.Unmap() == ip
		}
		return a.IsLoopback()
	})
	if o.mux != nil {
		se.SetICEUDPMux(o.mux)
	}
	if tcp {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeTCP4})
	} else {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(se),
		webrtc.WithInterceptorRegistry(ir)), nil
}

// srtpReplayWindow is how many packets behind the newest an SRTP packet
// is still accepted (once), as in Chrome and Firefox (libwebrtc's and
// Firefox's libsrtp policy window_size is 1024). pion's default is 64:
// a NACKed retransmission arriving more than 64 packets after the
// newest (a loss at a high packet rate, a slow round trip) fails the
// replay check, so neither the NACK generator nor the application sees
// it and the client NACKs it again (sfu.TestLateRetransmissionAccepted).
const srtpReplayWindow = 1024

// nackRetries is the most times a client NACKs one missing packet, as
// Chrome's NackRequester gives up after kMaxNackRetries (10). pion's
// generator, by default, NACKs a missing packet every 100 ms for as long
// as it stays in its 512-packet window: on a track that went quiet, until
// it arrives, and the SFU answers each NACK.
const nackRetries = 10

// registerFeedback registers the browser-like interceptors of
// WithFeedback: webrtc.ConfigureNack's, but with NACK retries bounded.
func registerFeedback(me *webrtc.MediaEngine, ir *interceptor.Registry) error {
	if err := webrtc.ConfigureNackWithOptions(me, ir, []nack.GeneratorOption{nack.GeneratorMaxNacksPerPacket(nackRetries)}); err != nil {
		return err
	}
	if err := webrtc.ConfigureRTCPReports(ir); err != nil {
		return err
	}
	if err := webrtc.ConfigureTWCCHeaderExtensionSender(me, ir); err != nil {
		return err
	}
	return webrtc.ConfigureTWCCSender(me, ir)
}
