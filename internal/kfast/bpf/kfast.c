// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// The one object of traverse's kernel fast path: every tc program, each in
// its own file on include/. kfast.Load loads one of them with the maps it
// uses (see internal/kfast/gen.go to regenerate).

#include "mediaflow.c"
#include "turnchannel.c"
#include "distribute.c"
#include "stunanswer.c"

char __license[] SEC("license") = "Dual MIT/GPL";
