package turnchannel

import "github.com/traverse-rtc/traverse/internal/kfast"

// Config configures an Offloader: NetNS, MaxFlows (default 16384: the
// channels the kernel holds; beyond it, new channels stay in user space)
// and Clsact, as kfast.FlowConfig says.
type Config = kfast.FlowConfig

// defaultMaxFlows is MaxFlows when 0.
const defaultMaxFlows = 16384
