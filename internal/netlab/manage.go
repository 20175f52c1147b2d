package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NamespaceInfo describes one namespace of a lab found on the machine.
type NamespaceInfo struct {
	Lab, Node, Namespace string
	// Addrs are the IPv4 addresses of its interfaces, lo aside, by
	// interface name.
	Addrs map[string][]netip.Prefix
	// Pids are the processes running in it.
	Pids []int
}

// List finds the namespaces of every lab on the machine (whoever made
// them), sorted by lab then node.
func List() ([]NamespaceInfo, error) {
	names, err := namespaces(Prefix)
	if err != nil {
		return nil, err
	}
	pids, err := pidsByNamespace()
	if err != nil {
		return nil, err
	}
	var out []NamespaceInfo
	for _, n := range names {
		lab, node, ok := strings.Cut(strings.TrimPrefix(n, Prefix), "-")
		if !ok {
			continue
		}
		info := NamespaceInfo{Lab: lab, Node: node, Namespace: n, Addrs: map[string][]netip.Prefix{}}
		if ino, err := inode(filepath.Join(nsDir, n)); err == nil {
			info.Pids = pids[ino]
		}
		if err := info.readAddrs(); err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Lab != out[j].Lab {
			return out[i].Lab < out[j].Lab
		}
		return out[i].Node < out[j].Node
	})
	return out, nil
}

func (info *NamespaceInfo) readAddrs() error {
	ns, err := netns.GetFromPath(filepath.Join(nsDir, info.Namespace))
	if err != nil {
		return nil // deleted meanwhile
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			if ok {
				info.Addrs[l.Attrs().Name] = append(info.Addrs[l.Attrs().Name], netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
	}
	return nil
}

// Down tears down the lab named name from outside the process that built
// it: it stops (SIGTERM, then SIGKILL after 2 s) the processes running in
// its namespaces, then deletes them.
func Down(name string) error {
	if !labRE.MatchString(name) {
		return fmt.Errorf("%w: lab %q", ErrBadName, name)
	}
	nss, err := namespaces(Prefix + name + "-")
	if err != nil {
		return err
	}
	if len(nss) == 0 {
		return fmt.Errorf("netlab: no lab %q", name)
	}
	return remove(nss)
}

// Clean tears down every lab on the machine, as Down does, and returns the
// namespaces it removed. It also removes the labs of tests running now:
// use it after a crash, not during a test run.
func Clean() ([]string, error) {
	nss, err := namespaces(Prefix)
	if err != nil {
		return nil, err
	}
	return nss, remove(nss)
}

func remove(nss []string) error {
	pids, err := pidsByNamespace()
	if err != nil {
		return err
	}
	var victims []int
	for _, n := range nss {
		if ino, err := inode(filepath.Join(nsDir, n)); err == nil {
			victims = append(victims, pids[ino]...)
		}
	}
	for _, p := range victims {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, p := range victims {
		for syscall.Kill(p, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if syscall.Kill(p, 0) == nil {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	var errs []error
	for _, n := range nss {
		if err := netns.DeleteNamed(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pidsByNamespace maps network namespace inodes to the processes in them.
func pidsByNamespace() (map[uint64][]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[uint64][]int{}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if ino, err := inode(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			out[ino] = append(out[ino], pid)
		}
	}
	return out, nil
}
