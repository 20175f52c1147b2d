package portmap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// maxRouteTable bounds how much of /proc/net/route is read.
const maxRouteTable = 1 << 20

// ParseRouteTable returns the next hop of the default route with the lowest
// metric in the text of Linux's /proc/net/route (IPv4 only; addresses are
// hex in host byte order, which is little-endian on every Linux this
// runs on).
func ParseRouteTable(b []byte) (netip.Addr, error) {
	var best netip.Addr
	bestMetric := uint64(math.MaxUint64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		if first { // the header line
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			return netip.Addr{}, fmt.Errorf("%w: route table line %q", ErrMalformed, sc.Text())
		}
		dst, gw, flags, metric, mask := f[1], f[2], f[3], f[6], f[7]
		if dst != "00000000" || mask != "00000000" {
			continue
		}
		fl, err := strconv.ParseUint(flags, 16, 32)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%w: route flags %q", ErrMalformed, flags)
		}
		const rtfUp, rtfGateway = 0x1, 0x2
		if fl&rtfUp == 0 || fl&rtfGateway == 0 {
			continue
		}
		m, err := strconv.ParseUint(metric, 10, 32)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%w: route metric %q", ErrMalformed, metric)
		}
		raw, err := hex.DecodeString(gw)
		if err != nil || len(raw) != 4 {
			return netip.Addr{}, fmt.Errorf("%w: route gateway %q", ErrMalformed, gw)
		}
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], binary.LittleEndian.Uint32(raw))
		if m < bestMetric {
			best, bestMetric = netip.AddrFrom4(a), m
		}
	}
	if err := sc.Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("%w: route table: %v", ErrMalformed, err)
	}
	if !best.IsValid() {
		return netip.Addr{}, ErrNoGateway
	}
	return best, nil
}

// DefaultGateway reads the default route's next hop from
// /proc/thread-self/net/route: the calling thread's network namespace,
// which is the process's unless the thread was moved (as lab tests do).
func DefaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/thread-self/net/route")
	if err != nil {
		if f, err = os.Open("/proc/net/route"); err != nil {
			return netip.Addr{}, fmt.Errorf("%w: %v", ErrNoGateway, err)
		}
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRouteTable+1))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %v", ErrNoGateway, err)
	}
	if len(b) > maxRouteTable {
		return netip.Addr{}, fmt.Errorf("%w: route table over %d bytes", ErrMalformed, maxRouteTable)
	}
	return ParseRouteTable(b)
}
