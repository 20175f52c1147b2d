package udpio

import _ "unsafe" // go:linkname

// Yield passes through the Go scheduler, for a loop that blocks in
// Set.Wait: a goroutine that only goes from one system call to the next
// looks stuck to the runtime, whose sysmon then preempts it with signals
// every 10 ms and polls every 20 us (measured as 15 % of a TURN relay's
// CPU); passing through the scheduler every few milliseconds keeps sysmon
// asleep. Unlike runtime.Gosched, Yield puts the goroutine on its own P's
// run queue and wakes no idle thread: Gosched's wake-up let another thread
// steal the loop each time, with a futex wake-up, a sleep and a thread
// migration (perf stat of the TURN benchmark run: about 3,000 futex calls
// and 200-2,300 migrations with Gosched, 100 and 70 with Yield).
func Yield() { goyield() }

// goyield is runtime.goyield, which the runtime keeps linkable on purpose
// (go.dev/issue/67401).
//
//go:linkname goyield runtime.goyield
func goyield()
