package kfast

// Every program (bpf/*.c, included by bpf/kfast.c, on include/) is compiled
// into one object, kfast_bpfel.o, with its Go bindings kfast_bpfel.go, both
// committed, so building needs no clang. Regenerating needs clang, llvm
// and the headers of libbpf-dev (bpf/bpf_helpers.h, bpf/bpf_endian.h) and
// linux-libc-dev (linux/*.h, asm/types.h under the multiarch include
// directory):
//
//	apt-get install -y --no-install-recommends clang llvm libbpf-dev
//	go generate ./internal/kfast/

//go:generate go tool bpf2go -tags linux -target bpfel kfast bpf/kfast.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
