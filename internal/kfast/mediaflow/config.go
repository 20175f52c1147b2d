package mediaflow

import "github.com/traverse-rtc/traverse/internal/kfast"

// Config configures an Offloader: NetNS, MaxFlows (default 32768) and
// Clsact, as kfast.FlowConfig says.
type Config = kfast.FlowConfig

// defaultMaxFlows is MaxFlows when 0.
const defaultMaxFlows = 32768
