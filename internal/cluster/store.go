package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// Options says how a Store opens its buckets.
type Options struct {
	// Create makes the buckets that do not exist (and updates their
	// replicas): the controller does; readers (signal) only bind.
	Create bool
	// Replicas is each bucket's replica count when created: 0 picks 3 when
	// the connection knows of 3 or more servers of its cluster, else 1.
	// A replicated bucket outlives the loss of one server of three.
	Replicas int
	// Buckets limits which buckets are opened (default all three); a
	// signal server reads only bus.BucketRooms.
	Buckets []string
}

// History kept per key: the last value only (compare-and-set needs no
// more, and it bounds the buckets' size).
const history = 1

// attemptTimeout bounds one attempt of Open to bind or make a bucket.
const attemptTimeout = 2 * time.Second

// Store reads and writes the cluster's buckets. It is safe for concurrent
// use.
type Store struct {
	js      jetstream.JetStream
	buckets map[string]jetstream.KeyValue
	bad     atomic.Uint64
}

// Replicas returns the replica count Options.Replicas 0 picks for nc.
func Replicas(nc *nats.Conn) int {
	if len(nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// Open opens (and with opts.Create, makes) the buckets over nc. In a
// cluster whose JetStream has just started, creation is retried until ctx
// ends.
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	names := opts.Buckets
	if len(names) == 0 {
		names = []string{bus.BucketNodes, bus.BucketRooms, bus.BucketLeader}
	}
	r := opts.Replicas
	if r <= 0 {
		r = Replicas(nc)
	}
	s := &Store{js: js, buckets: map[string]jetstream.KeyValue{}}
	for _, name := range names {
		var kv jetstream.KeyValue
		for {
			// Each attempt has its own deadline: a request that reached a
			// server whose JetStream is not ready yet gets no answer.
			actx, cancel := context.WithTimeout(ctx, attemptTimeout)
			if opts.Create {
				kv, err = js.CreateOrUpdateKeyValue(actx, jetstream.KeyValueConfig{
					Bucket: name, History: history, Replicas: r, Storage: jetstream.FileStorage,
				})
			} else {
				kv, err = js.KeyValue(actx, name)
			}
			cancel()
			if err == nil || ctx.Err() != nil || errors.Is(err, jetstream.ErrBucketNotFound) {
				break
			}
			// JetStream of a new cluster answers "unavailable" until its
			// meta group has a leader.
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err != nil {
			return nil, fmt.Errorf("cluster: bucket %s: %w", name, err)
		}
		s.buckets[name] = kv
	}
	return s, nil
}

// BadRecords returns how many records reads dropped because they did not
// decode or validate.
func (s *Store) BadRecords() uint64 { return s.bad.Load() }

func (s *Store) kv(bucket string) (jetstream.KeyValue, error) {
	kv := s.buckets[bucket]
	if kv == nil {
		return nil, fmt.Errorf("cluster: bucket %s not opened", bucket)
	}
	return kv, nil
}

// Entry is a record with its revision (for compare-and-set).
type Entry[T any] struct {
	Value    T
	Revision uint64
}

// get reads key of bucket; a bad record counts and reads as ErrBadRecord.
func get[T any, PT interface {
	*T
	validator
}](ctx context.Context, s *Store, bucket, key string) (Entry[T], error) {
	var zero Entry[T]
	kv, err := s.kv(bucket)
	if err != nil {
		return zero, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return zero, ErrNotFound
	}
	if err != nil {
		return zero, fmt.Errorf("cluster: get %s/%s: %w", bucket, key, err)
	}
	v, err := decode[T, PT](e.Value())
	if err != nil {
		s.bad.Add(1)
		return Entry[T]{Revision: e.Revision()}, err
	}
	return Entry[T]{Value: v, Revision: e.Revision()}, nil
}

// all reads every record of bucket, dropping (and counting) bad ones.
func all[T any, PT interface {
	*T
	validator
}](ctx context.Context, s *Store, bucket string) ([]Entry[T], error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("cluster: list %s: %w", bucket, err)
	}
	defer w.Stop()
	var out []Entry[T]
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			if e == nil { // the initial values are all in
				return out, nil
			}
			v, err := decode[T, PT](e.Value())
			if err != nil {
				s.bad.Add(1)
				continue
			}
			out = append(out, Entry[T]{Value: v, Revision: e.Revision()})
		}
	}
}

// put writes v at key: with rev 0 only if the key is absent (or deleted),
// else only if its revision is still rev. ErrConflict when not.
func put(ctx context.Context, s *Store, bucket, key string, v validator, rev uint64) (uint64, error) {
	if err := v.Validate(); err != nil {
		return 0, err
	}
	kv, err := s.kv(bucket)
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("cluster: encode %s/%s: %w", bucket, key, err)
	}
	var n uint64
	if rev == 0 {
		n, err = kv.Create(ctx, key, b)
	} else {
		n, err = kv.Update(ctx, key, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("%w: %s/%s", ErrConflict, bucket, key)
	}
	if err != nil {
		return 0, fmt.Errorf("cluster: write %s/%s: %w", bucket, key, err)
	}
	return n, nil
}

// del deletes key if its revision is still rev (0: whatever it is).
func del(ctx context.Context, s *Store, bucket, key string, rev uint64) error {
	kv, err := s.kv(bucket)
	if err != nil {
		return err
	}
	var opts []jetstream.KVDeleteOpt
	if rev != 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err = kv.Delete(ctx, key, opts...)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("%w: %s/%s", ErrConflict, bucket, key)
	}
	if err != nil {
		return fmt.Errorf("cluster: delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

// CascadeEpoch reads the cascade's key epoch (ErrNotFound before the
// first leader wrote it).
func (s *Store) CascadeEpoch(ctx context.Context) (Entry[CascadeEpochRecord], error) {
	return get[CascadeEpochRecord](ctx, s, bus.BucketLeader, CascadeEpochKey)
}

// PutCascadeEpoch writes the cascade's key epoch if its revision is still
// rev (0: only if absent); ErrConflict when another controller wrote it.
func (s *Store) PutCascadeEpoch(ctx context.Context, r CascadeEpochRecord, rev uint64) (uint64, error) {
	return put(ctx, s, bus.BucketLeader, CascadeEpochKey, &r, rev)
}

// PutNode writes a node record (last writer wins: only the leader writes
// the registry, and an announcement is the truth of its moment).
func (s *Store) PutNode(ctx context.Context, r NodeRecord) error {
	if err := r.Validate(); err != nil {
		return err
	}
	kv, err := s.kv(bus.BucketNodes)
	if err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("cluster: encode node %s: %w", r.Node, err)
	}
	if _, err := kv.Put(ctx, r.Node, b); err != nil {
		return fmt.Errorf("cluster: write node %s: %w", r.Node, err)
	}
	return nil
}

// Node reads one node record.
func (s *Store) Node(ctx context.Context, node string) (Entry[NodeRecord], error) {
	if !bus.ValidName(node) {
		return Entry[NodeRecord]{}, ErrNotFound
	}
	return get[NodeRecord](ctx, s, bus.BucketNodes, node)
}

// Nodes reads the whole registry, bad records dropped and counted.
func (s *Store) Nodes(ctx context.Context) ([]Entry[NodeRecord], error) {
	return all[NodeRecord](ctx, s, bus.BucketNodes)
}

// Room reads a room's directory record; ErrNotFound when the room lives
// nowhere.
func (s *Store) Room(ctx context.Context, room string) (Entry[RoomRecord], error) {
	if !bus.ValidName(room) {
		return Entry[RoomRecord]{}, ErrNotFound
	}
	return get[RoomRecord](ctx, s, bus.BucketRooms, room)
}

// Rooms reads the whole directory, bad records dropped and counted.
func (s *Store) Rooms(ctx context.Context) ([]Entry[RoomRecord], error) {
	return all[RoomRecord](ctx, s, bus.BucketRooms)
}

// PutRoom writes r if the room's record is still at rev (0: absent);
// ErrConflict otherwise. It returns the new revision.
func (s *Store) PutRoom(ctx context.Context, r RoomRecord, rev uint64) (uint64, error) {
	return put(ctx, s, bus.BucketRooms, r.Room, &r, rev)
}

// DeleteRoom removes a room's record if it is still at rev.
func (s *Store) DeleteRoom(ctx context.Context, room string, rev uint64) error {
	return del(ctx, s, bus.BucketRooms, room, rev)
}

// Directory is the room directory as a signal server reads it: bound
// lazily (the bucket exists once a controller has run; until then, and
// for retryBind after a failed bind, every lookup answers "unknown"), read
// with a direct get per lookup. It is safe for concurrent use.
type Directory struct {
	open func(ctx context.Context) (*Store, error)

	mu       sync.Mutex // guards store and failedAt
	store    *Store
	failedAt time.Time
}

// retryBind is how long a Directory waits after a failed bind.
const retryBind = 5 * time.Second

// NewDirectory returns the room directory over nc (a signal connection:
// it may read bus.BucketRooms only).
func NewDirectory(nc *nats.Conn) *Directory {
	return &Directory{open: func(ctx context.Context) (*Store, error) {
		return Open(ctx, nc, Options{Buckets: []string{bus.BucketRooms}})
	}}
}

func (d *Directory) bound(ctx context.Context) *Store {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.store != nil {
		return d.store
	}
	if !d.failedAt.IsZero() && time.Since(d.failedAt) < retryBind {
		return nil
	}
	s, err := d.open(ctx)
	if err != nil {
		d.failedAt = time.Now()
		return nil
	}
	d.store = s
	return s
}

// RoomNode returns the node the directory places room on, and whether
// that node was declared dead or draining (the room must be placed
// again); ok is false when the room is not in the directory or the
// directory cannot be read now.
func (d *Directory) RoomNode(ctx context.Context, room string) (node string, replace, ok bool) {
	s := d.bound(ctx)
	if s == nil {
		return "", false, false
	}
	e, err := s.Room(ctx, room)
	if err != nil {
		return "", false, false
	}
	return e.Value.Node, e.Value.Replace, true
}

// maxListedRooms bounds what one Directory.Rooms reads.
const maxListedRooms = 10000

// Rooms lists the directory's rooms, at most maxListedRooms of them (bad
// records dropped and counted); ErrUnavailable when the directory cannot
// be read now. A reader may only read the bucket (no watch, which would
// create a consumer): the keys come from the stream's subjects, then
// each record by direct get. A room removed between the two is left out.
func (d *Directory) Rooms(ctx context.Context) ([]RoomRecord, error) {
	s := d.bound(ctx)
	if s == nil {
		return nil, ErrUnavailable
	}
	st, err := s.js.Stream(ctx, "KV_"+bus.BucketRooms)
	if err != nil {
		return nil, fmt.Errorf("cluster: list %s: %w", bus.BucketRooms, err)
	}
	prefix := "$KV." + bus.BucketRooms + "."
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("cluster: list %s: %w", bus.BucketRooms, err)
	}
	keys := make([]string, 0, min(len(info.State.Subjects), maxListedRooms))
	for subj := range info.State.Subjects {
		if len(keys) == maxListedRooms {
			break
		}
		keys = append(keys, strings.TrimPrefix(subj, prefix))
	}
	slices.Sort(keys)
	out := make([]RoomRecord, 0, len(keys))
	for _, k := range keys {
		e, err := get[RoomRecord](ctx, s, bus.BucketRooms, k)
		switch {
		case err == nil:
			out = append(out, e.Value)
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrBadRecord):
		default:
			return nil, err
		}
	}
	return out, nil
}

// BadRecords returns the directory records dropped as invalid.
func (d *Directory) BadRecords() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.store == nil {
		return 0
	}
	return d.store.BadRecords()
}
