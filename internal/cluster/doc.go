// Package cluster is the state shared by every process of a many-node
// deployment, kept in JetStream key-value buckets replicated over the NATS
// cluster (R3 on three or more servers, R1 on one), never in one process's
// memory: the node registry (bus.BucketNodes), the room directory
// (bus.BucketRooms) and the controllers' leadership lease
// (bus.BucketLeader). docs/cluster.md describes them.
//
// Records are JSON, typed, and validated when read: a record that does not
// decode or validate is dropped and counted (Store.BadRecords), never
// trusted. Writes that must not race use the key's revision
// (compare-and-set), so a stale writer is refused by the server.
package cluster
