package turnoffload

// The program (bpf/turnrelay.c) is compiled into turnrelay_bpfel.o and its
// Go bindings turnrelay_bpfel.go, both committed, so building needs no
// clang. Regenerating needs clang, llvm and the headers of libbpf-dev and
// linux-libc-dev (see internal/mediaproxy/bpfoffload/gen.go):
//
//	go generate ./internal/turn/turnoffload/

//go:generate go tool bpf2go -tags linux -target bpfel -type relay_key -type relay_value -type relay_counters turnrelay bpf/turnrelay.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
