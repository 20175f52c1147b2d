// Package portmap asks the home router for a port mapping, so that a host
// behind a NAT that filters unsolicited inbound packets can still be
// reached on a known public address:port: the mapping is one more
// candidate for a peer-to-peer path (package client/p2p), as in Tailscale's
// net/portmapper.
//
// It speaks the three protocols home routers offer:
//
//   - PCP, the Port Control Protocol (RFC 6887): a MAP request (section
//     11) to the gateway's UDP port 5351, carrying a random nonce that the
//     answer must echo.
//   - NAT-PMP (RFC 6886): an external-address request (section 3.2) and a
//     UDP mapping request (section 3.3) to the same port.
//   - UPnP IGD: an SSDP M-SEARCH (UPnP Device Architecture 1.1, section
//     1.3.2) sent to the gateway's port 1900, the device description it
//     points to, then the WANIPConnection (or WANPPPConnection) SOAP
//     actions GetExternalIPAddress, AddPortMapping and DeletePortMapping.
//
// A Client first finds the gateway (the next hop of the default route, read
// from /proc/net/route unless Config.Gateway names it) and probes all three
// protocols at once (Probe): one round trip each, no state created on the
// router. Map then asks for a mapping with the best protocol that answered,
// in the order PCP, NAT-PMP, UPnP, falling back to the next when one
// refuses: PCP first because its nonce binds the answer to the request and
// it says which external address it chose in the same answer; NAT-PMP next
// (two round trips, no nonce); UPnP last (an HTTP exchange, an XML parser
// and a device that often lies about lease times).
//
// The client only talks to the gateway: a datagram from any other address
// or port is dropped and counted (Stats.Foreign), so a host on the LAN
// cannot forge a mapping; SSDP answers must point (LOCATION) at the
// gateway's own address; HTTP bodies and headers are bounded
// (Config.MaxHTTPBytes) and every exchange has a deadline.
//
// A Mapping renews itself at half its lifetime (RFC 6886 section 3.3, RFC
// 6887 section 11.2.1) and deletes itself from the router on Close.
package portmap
