package distbpf

// The program (bpf/distribute.c) is compiled into distribute_bpfel.o and
// its Go bindings distribute_bpfel.go, both committed, so building needs
// no clang. Regenerating needs clang, llvm and the headers of libbpf-dev
// and linux-libc-dev (see internal/mediaproxy/bpfoffload/gen.go):
//
//	go generate ./internal/distribute/distbpf/

//go:generate go tool bpf2go -tags linux -target bpfel -type dist_key -type dist_value -type dist_rcv -type dist_counters distribute bpf/distribute.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
