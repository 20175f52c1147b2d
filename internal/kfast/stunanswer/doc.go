// Package stunanswer answers STUN Binding requests in the kernel for
// internal/stun (`traverse stun --offload ebpf`): the tc program
// stunanswer (internal/kfast, bpf/stunanswer.c) answers a Binding request
// without attributes, or with only a FINGERPRINT, byte for byte as the
// user-space server would, in place, and passes everything else (RFC 5780
// change requests, authenticated or padded requests, other methods, TCP,
// IPv6, malformed datagrams) to the user-space server untouched. See
// docs/stun.md.
package stunanswer
