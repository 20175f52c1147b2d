package controller

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	leader    prometheus.Gauge
	revision  prometheus.Gauge
	changes   prometheus.Counter
	leaseLost prometheus.Counter
	nodes     prometheus.Gauge
	rooms     prometheus.Gauge
	dead      prometheus.Counter
	dropped   prometheus.Counter
	kvErrors  *prometheus.CounterVec
	bad       func() float64
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_controller_leader",
			Help: "1 while this controller holds the leadership lease."}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_controller_lease_revision",
			Help: "Revision of the leadership lease this controller holds (0: not leading); grows with each renewal."}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_controller_leader_changes_total",
			Help: "Times this controller took the leadership lease."}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_controller_lease_lost_total",
			Help: "Renewals refused because another controller had taken the lease (this one stopped acting)."}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_controller_nodes",
			Help: "SFU nodes the controller knows alive."}),
		rooms: prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_controller_rooms",
			Help: "Rooms in the controller's view of the directory."}),
		dead: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_controller_nodes_dead_total",
			Help: "Nodes declared dead (silent past node-dead-after) by this controller while leading."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_controller_events_dropped_total",
			Help: "Announcements and room events dropped because the controller's queue (queue-len) was full."}),
		kvErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_controller_kv_errors_total",
			Help: "Bucket reads and writes that failed, by kind (lease, node, room, read, epoch)."}, []string{"op"}),
	}
	bad := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "traverse_controller_bad_messages_total",
		Help: "Bus messages and bucket records dropped because they did not decode or validate."},
		func() float64 {
			if m.bad == nil {
				return 0
			}
			return m.bad()
		})
	for _, c := range []prometheus.Collector{m.leader, m.revision, m.changes, m.leaseLost, m.nodes, m.rooms, m.dead, m.dropped, m.kvErrors, bad} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("controller: metrics: %w", err)
		}
	}
	return m, nil
}
