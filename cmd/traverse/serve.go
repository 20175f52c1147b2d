package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"

	"gopkg.in/yaml.v3"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/connlimit"
)

// serveRole is one role that "traverse serve" runs. Each role's file adds
// itself to serveRoles from an init function, so serve grows as roles arrive
// without one file that every role edits.
type serveRole struct {
	// name is the role's section in the YAML file and the prefix of its
	// flags: the stun role's --listen is serve's --stun-listen.
	name string
	// order sorts start-up: lower starts first (the bus before its users).
	order int
	// bind returns the role's config section, filled with serve's
	// defaults, after registering its flags on fs under prefix.
	bind func(fs *flag.FlagSet, prefix string) any
	// start binds the role's sockets and returns its main loop. Roles that
	// others depend on publish what those need in env.
	start func(ctx context.Context, env *serveEnv) (runner, error)
}

var serveRoles []serveRole

func registerServeRole(r serveRole) { serveRoles = append(serveRoles, r) }

// serveEnv is what the roles of one serve process share.
type serveEnv struct {
	log   *slog.Logger
	admin *admin.Server
	// cfg holds each role's config section by role name.
	cfg map[string]any
	// bus is the embedded NATS server, set by the bus role; roles get
	// their credentials from it (inProcessBus). busTLS, when set, is how
	// they trust its certificate.
	bus    *bus.Embedded
	busTLS *tls.Config
	// own are the process's listeners, which serve's TURN refuses as
	// peers even with loopback peers allowed (ownEndpoints).
	own []netip.AddrPort
	// ice, set in serve, is filled by the stun and turn roles: their URLs
	// and a TURN credential minter for browsers.
	ice *iceShare
	// budgets caps, by role, the connections the role's TCP listeners hold
	// open together (connlimit.Split of the descriptor limit by fdShares).
	budgets map[string]int
}

// fdShares weigh the roles' claims on the descriptors of the serve process:
// one descriptor table serves every role, and a flood of one role's port
// must stop at that role's budget (issue 10: 20,000 idle connections to the
// signaling port once failed STUN, the bus, /healthz and TURN alike). The
// roles that carry browsers weigh most. A role applies its budget as the
// total cap of its listeners (connlimit.Cap).
var fdShares = []connlimit.Share{
	{Role: "signal", Weight: 4}, {Role: "turn", Weight: 4}, {Role: "stun", Weight: 1},
	{Role: "sipgw", Weight: 1}, {Role: "bus", Weight: 1}, {Role: "admin", Weight: 1},
}

// budgeted is a role's connection cap in serve: configured (def when 0),
// lowered to the role's descriptor budget.
func (env *serveEnv) budgeted(role string, configured, def int) int {
	if configured <= 0 {
		configured = def
	}
	return connlimit.Cap(configured, env.budgets[role])
}

// fdBudgets raises the descriptor limit to the hard limit and splits it
// among the roles.
func fdBudgets(log *slog.Logger) map[string]int {
	limit, err := connlimit.RaiseFDLimit()
	if err != nil {
		log.Warn("no descriptor budgets for the roles", "err", err)
		return map[string]int{}
	}
	b := connlimit.Split(limit, fdShares...)
	log.Debug("descriptor budgets", "limit", limit, "reserved", connlimit.Reserved(limit), "budgets", b)
	return b
}

// serveConfig is serve's YAML file: the common keys, then one section per
// role named for it.
type serveConfig struct {
	common `yaml:",inline"`
	roles  map[string]any
}

func (c *serveConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return n.Decode(&c.common) // yaml.v3's own type error
	}
	// The common keys (admin, log, pprof) at the top, each role's keys in
	// its section: every other key is a mistake to report, not to ignore.
	top := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		dst, ok := c.roles[k.Value]
		if !ok {
			top.Content = append(top.Content, k, v)
			continue
		}
		if err := config.DecodeStrict(v, dst, k.Value); err != nil {
			return err
		}
	}
	if err := config.DecodeStrict(top, &c.common, ""); err != nil {
		if errors.Is(err, config.ErrUnknownKey) {
			return fmt.Errorf("%w (the top level takes admin, log and pprof; each role's keys go in its section: %v)", err, roleNames())
		}
		return err
	}
	return nil
}

func roleNames() []string {
	var names []string
	for _, r := range serveRoles {
		names = append(names, r.name)
	}
	sort.Strings(names)
	return names
}

func init() {
	register(command{name: "serve", summary: "run every role in one process (defaults on localhost)", run: runServe})
}

func runServe(ctx context.Context, args []string) error {
	sort.SliceStable(serveRoles, func(i, j int) bool { return serveRoles[i].order < serveRoles[j].order })
	cfg := serveConfig{common: common{Admin: "127.0.0.1:9090"}, roles: map[string]any{}}
	fs := newFlagSet("serve", "serve [flags]")
	cfg.flags(fs)
	for _, r := range serveRoles {
		cfg.roles[r.name] = r.bind(fs, r.name+"-")
	}
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	adm := admin.New(log)
	env := &serveEnv{log: log, admin: adm, ice: &iceShare{}, cfg: cfg.roles, own: ownEndpoints(&cfg), budgets: fdBudgets(log)}
	adm.Limits.MaxConns = connlimit.Cap(adm.Limits.MaxConns, env.budgets["admin"])
	var runners []runner
	for _, r := range serveRoles {
		run, err := r.start(ctx, env)
		if err != nil {
			// The runners already made hold sockets: let them release them.
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_ = runAll(cctx, log, runners...)
			return fmt.Errorf("%s: %w", r.name, err)
		}
		runners = append(runners, run)
	}
	log.Info("traverse serving", "roles", roleNames())
	return runWithAdmin(ctx, log, adm, &cfg.common, runners...)
}
