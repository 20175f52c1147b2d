package mediaflow

// The program (bpf/mediaflow.c, on internal/kfast/include) is compiled into
// mediaflow_bpfel.o and its Go bindings mediaflow_bpfel.go, both committed,
// so building needs no clang. Regenerating needs clang, llvm and the
// headers of libbpf-dev (bpf/bpf_helpers.h, bpf/bpf_endian.h) and
// linux-libc-dev (linux/*.h, asm/types.h under the multiarch include
// directory):
//
//	apt-get install -y --no-install-recommends clang llvm libbpf-dev
//	go generate ./internal/kfast/...

//go:generate go tool bpf2go -tags linux -target bpfel mediaflow bpf/mediaflow.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
