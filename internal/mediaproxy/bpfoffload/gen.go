package bpfoffload

// The program (bpf/fastpath.c) is compiled into fastpath_bpfel.o and its Go
// bindings fastpath_bpfel.go, both committed, so building needs no clang.
// Regenerating needs clang, llvm and the headers of libbpf-dev
// (bpf/bpf_helpers.h, bpf/bpf_endian.h) and linux-libc-dev (linux/*.h,
// asm/types.h under the multiarch include directory):
//
//	apt-get install -y --no-install-recommends clang llvm libbpf-dev
//	go generate ./internal/mediaproxy/bpfoffload/

//go:generate go tool bpf2go -tags linux -target bpfel -type flow_key -type flow_value fastpath bpf/fastpath.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
