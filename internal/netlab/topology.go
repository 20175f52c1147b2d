package netlab

import (
	"fmt"
)

// Topology names what "traverse lab up" builds: a client behind each NAT
// kind plus two levels of NAT ("all"), an eim-eif home NAT behind an
// eim-adf carrier NAT ("double"), or a client behind one NAT of a kind
// (its ParseKind name).
type Topology struct {
	// Kinds get one NAT each, with a client behind it.
	Kinds []Kind
	// Double adds a client behind an eim-eif NAT behind an eim-adf one.
	Double bool
}

// ParseTopology parses "all", "double" or a Kind's name.
func ParseTopology(s string) (Topology, error) {
	switch s {
	case "all":
		return Topology{Kinds: Kinds, Double: true}, nil
	case "double":
		return Topology{Double: true}, nil
	}
	k, err := ParseKind(s)
	if err != nil {
		return Topology{}, err
	}
	return Topology{Kinds: []Kind{k}}, nil
}

// shortNames name each kind's NAT node (node names are [a-z0-9]{1,12}).
var shortNames = map[Kind]string{
	Routed:              "routed",
	EIMEIF:              "eimeif",
	EIMADF:              "eimadf",
	EIMAPDF:             "eimapdf",
	SymmetricSequential: "symseq",
	SymmetricRandom:     "symrand",
	BlockUDP:            "blockudp",
	ADMAPDF:             "admapdf",
}

// Built is a topology built in a lab.
type Built struct {
	// STUN is the host "stun" with two addresses on the lab's internet,
	// where an RFC 5780 server belongs.
	STUN *Host
	// Roles list the nodes in the order built, with what each is
	// ("inet", "the internet (bridge, router)"; "home", "NAT eim-eif
	// behind cgn").
	Roles []NodeRole
	// Client is the namespace of a client to try NAT discovery from:
	// behind a NAT that passes UDP where there is one.
	Client string
}

// NodeRole is one node of a Built topology and what it is.
type NodeRole struct{ Node, Role string }

// Build builds t in l with every NAT made with opts. On an error the lab
// may hold part of the topology: close it.
func (t Topology) Build(l *Lab, opts ...NATOption) (Built, error) {
	b := Built{STUN: l.Host("stun", l.Internet(), Addrs(2))}
	b.Roles = []NodeRole{{"inet", "the internet (bridge, router)"}, {"stun", "host"}}
	for _, k := range t.Kinds {
		n := l.NAT(shortNames[k], l.Internet(), k, opts...)
		c := l.Host("c"+shortNames[k], n)
		b.Roles = append(b.Roles, NodeRole{n.Name(), "NAT " + k.String()}, NodeRole{c.Name(), "host behind " + n.Name()})
		if b.Client == "" && k.Translates() && k != BlockUDP {
			b.Client = c.Namespace()
		}
	}
	if t.Double {
		cgn := l.NAT("cgn", l.Internet(), EIMADF, opts...)
		home := l.NAT("home", cgn, EIMEIF, opts...)
		c := l.Host("cdouble", home)
		b.Roles = append(b.Roles, NodeRole{"cgn", "NAT eim-adf (carrier)"}, NodeRole{"home", "NAT eim-eif behind cgn"},
			NodeRole{c.Name(), "host behind home"})
		if b.Client == "" {
			b.Client = c.Namespace()
		}
	}
	if b.Client == "" && len(t.Kinds) > 0 { // a lone router or firewall
		b.Client = "tl-" + l.Name() + "-c" + shortNames[t.Kinds[0]]
	}
	if err := l.Err(); err != nil {
		return b, fmt.Errorf("netlab: build topology: %w", err)
	}
	return b, nil
}
