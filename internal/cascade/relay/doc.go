// Package relay is a node's cascade relay endpoint: one UDP port (through
// internal/udpio, batched) over which the node exchanges relay frames
// (package relaywire) with its neighbours. It authenticates and decrypts
// every frame with the link's key, repairs losses on each link (package
// recovery: NACKs and FEC), probes each neighbour (package probe), and
// forwards each media or feedback message by its destinations and this
// node's route table, once per next hop however many destinations lie
// beyond it, delivering locally what is addressed to this node through the
// Local interface the SFU implements.
//
// What it does not do (yet): learn its peers, routes and needs by itself.
// The controller pushes them (SetPeers, SetRoutes, SetNeed); docs/cascade.md
// says how that is wired.
package relay
