package sfu

import "sync/atomic"

// storeFiltered replaces the copy-on-write list in p with its elements
// that keep accepts (all of them when keep is nil), followed by add; a
// nil p is an empty list. Readers load the list without a lock on the
// media path; the caller serialises writers.
func storeFiltered[T any](p *atomic.Pointer[[]T], keep func(T) bool, add ...T) {
	var old []T
	if o := p.Load(); o != nil {
		old = *o
	}
	n := make([]T, 0, len(old)+len(add))
	for _, x := range old {
		if keep == nil || keep(x) {
			n = append(n, x)
		}
	}
	n = append(n, add...)
	p.Store(&n)
}
