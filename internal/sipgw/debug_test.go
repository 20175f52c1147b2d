package sipgw

import (
	"os"

	"github.com/emiago/sipgo/sip"
)

func init() {
	if os.Getenv("SIPDEBUG") != "" {
		sip.SIPDebug = true
	}
}
