package turnchannel

// The program (bpf/turnchannel.c, on internal/kfast/include) is compiled
// into turnchannel_bpfel.o and its Go bindings turnchannel_bpfel.go, both
// committed, so building needs no clang. Regenerating needs clang, llvm and
// the headers of libbpf-dev and linux-libc-dev (see
// internal/kfast/mediaflow/gen.go):
//
//	go generate ./internal/kfast/...

//go:generate go tool bpf2go -tags linux -target bpfel turnchannel bpf/turnchannel.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
