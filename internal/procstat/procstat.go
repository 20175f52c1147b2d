// Package procstat reads CPU time and memory from /proc for the load
// drivers' cost figures (traverse load, bench/distload, bench/udpfwd,
// bench/sipgwload): a process's utime+stime and resident set, and the
// machine's busy and softirq time. Linux only; elsewhere the reads fail.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// hz is USER_HZ on Linux, the unit of /proc's CPU times.
const hz = 100

// ErrFormat is a /proc file that does not parse.
var ErrFormat = errors.New("procstat: unexpected format")

// Process is one process's CPU time in seconds and resident memory.
type Process struct {
	User, System float64
	RSS          uint64 // bytes
}

// CPU is User+System.
func (p Process) CPU() float64 { return p.User + p.System }

// Read reads /proc/<pid>/stat; pid "self" is this process.
func Read(pid string) (Process, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return Process{}, err
	}
	return parseStat(b, uint64(os.Getpagesize()))
}

// ReadPID is Read of a process id; a pid <= 0 or one that cannot be read
// gives the zero Process (a load driver run without a server to watch).
func ReadPID(pid int) Process {
	if pid <= 0 {
		return Process{}
	}
	p, _ := Read(strconv.Itoa(pid))
	return p
}

// parseStat reads utime, stime and rss (fields 14, 15 and 24 of proc(5))
// from the fields after the parenthesised command name, which may hold
// spaces and parentheses itself.
func parseStat(b []byte, page uint64) (Process, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Process{}, fmt.Errorf("%w: no command name", ErrFormat)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 22 {
		return Process{}, fmt.Errorf("%w: %d fields after the command name", ErrFormat, len(f))
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	rss, err3 := strconv.ParseUint(string(f[21]), 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Process{}, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return Process{User: float64(ut) / hz, System: float64(st) / hz, RSS: rss * page}, nil
}

// Machine is the CPU time of all CPUs together, in seconds.
type Machine struct {
	// Busy is all but idle, iowait, guest and guest_nice (guest time is
	// counted in user already).
	Busy float64
	// SoftIRQ is the time in softirq handlers (packet processing).
	SoftIRQ float64
}

// ReadMachine reads the first ("cpu") line of /proc/stat.
func ReadMachine() (Machine, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return Machine{}, err
	}
	return parseMachine(b)
}

func parseMachine(b []byte) (Machine, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 8 || string(f[0]) != "cpu" {
		return Machine{}, fmt.Errorf("%w: first line of /proc/stat", ErrFormat)
	}
	var m Machine
	for i, v := range f[1:] {
		x, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return Machine{}, fmt.Errorf("%w: %w", ErrFormat, err)
		}
		switch {
		case i == 6:
			m.SoftIRQ = x / hz
		case i == 3 || i == 4 || i >= 8: // idle, iowait, guest, guest_nice
			continue
		}
		m.Busy += x / hz
	}
	return m, nil
}
