package main

import (
	"context"
	"errors"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/controller"
)

// controllerConfig is the controller role's configuration.
type controllerConfig struct {
	common             `yaml:",inline"`
	natsClientConfig   `yaml:",inline"`
	ID                 string        `yaml:"id"`
	LeaseTTL           time.Duration `yaml:"lease-ttl"`
	NodeDeadAfter      time.Duration `yaml:"node-dead-after"`
	KVReplicas         int           `yaml:"kv-replicas"`
	QueueLen           int           `yaml:"queue-len"`
	Cascade            bool          `yaml:"cascade"`
	CascadeKeyRotation time.Duration `yaml:"cascade-key-rotation"`
}

func runController(ctx context.Context, args []string) error {
	cfg := controllerConfig{common: common{Admin: "127.0.0.1:9790"}}
	fs := newFlagSet("controller", "controller --nats URL[,URL...] --nats-creds DIR/controller.creds [flags]")
	cfg.common.flags(fs)
	bindNATSClientFlags(fs, "", &cfg.natsClientConfig, "NATS server `URL`s, comma-separated, of the cluster the nodes and signal servers are on")
	fs.StringVar(&cfg.ID, "id", "", "this controller's `id` in the leadership lease, unique per controller (default HOSTNAME-PID)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", 0, "leadership lasts this `duration` unrenewed; renewed every third of it; a dead leader is replaced within about 1.33 times it (0: 2s)")
	fs.DurationVar(&cfg.NodeDeadAfter, "node-dead-after", 0, "declare an SFU node dead when silent this `duration`; keep it over two announcement intervals (0: 2s, or three announcement intervals when longer)")
	fs.IntVar(&cfg.KVReplicas, "kv-replicas", 0, "replicas of the buckets when made (0: 3 on a cluster of three or more servers, else 1)")
	fs.IntVar(&cfg.QueueLen, "queue-len", 0, "announcements and room events waiting at most; beyond, dropped and counted (0: 4096)")
	fs.BoolVar(&cfg.Cascade, "cascade", false, "run the cascade: routes between SFU nodes' relay ports from their link reports, and each node's peers, routes, needs and remote tracks pushed on traverse.cascade.<node>.cmd (docs/cascade.md)")
	fs.DurationVar(&cfg.CascadeKeyRotation, "cascade-key-rotation", 0, "with --cascade: step the relay links' key epoch every `duration` (at least 1s); the previous epoch stays accepted for min(30s, half of it) (0: 1h)")
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	busCfg := cfg.busClient("controller")
	if len(busCfg.URLs) == 0 {
		return errors.New("--nats is required")
	}
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		c, err := controller.New(controller.Config{ID: cfg.ID, Bus: busCfg, LeaseTTL: cfg.LeaseTTL,
			NodeDeadAfter: cfg.NodeDeadAfter, Replicas: cfg.KVReplicas, QueueLen: cfg.QueueLen, Cascade: cfg.Cascade,
			CascadeKeyRotation: cfg.CascadeKeyRotation,
			Registerer:         adm.Registry, Log: log.With("role", "controller")})
		if err != nil {
			return nil, err
		}
		adm.AddCheck("controller", c.Ready)
		log.Info("controller started", "id", c.ID())
		return runThenClose(c), nil
	})
}

func init() {
	register(command{name: "controller", summary: "the cluster's controller: node registry, room directory, dead nodes (one of several leads)", run: runController})
}
