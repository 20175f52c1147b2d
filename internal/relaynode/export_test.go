package relaynode

import (
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/client/nat"
)

// MisjudgeFiltering makes n report filtering f instead of what discovery
// found, before Run: a node whose discovery was wrong.
func MisjudgeFiltering(n *Node, f nat.Behavior) { n.nat.Filtering = f }

// Binds is how many peers n bound.
func Binds(n *Node) float64 { return testutil.ToFloat64(n.m.binds) }
