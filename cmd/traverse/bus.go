package main

import (
	"context"
	"flag"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// busConfig is the embedded NATS server of "traverse serve".
type busConfig struct {
	Listen string `yaml:"listen"`
}

func bindBus(fs *flag.FlagSet, prefix string) any {
	c := &busConfig{Listen: "127.0.0.1:4222"}
	fs.StringVar(&c.Listen, prefix+"listen", c.Listen, "embedded NATS server `host:port` the roles talk over (port 0 picks one)")
	return c
}

func init() {
	registerServeRole(serveRole{name: "bus", order: 0, bind: bindBus, start: startBus})
}

func startBus(_ context.Context, env *serveEnv) (runner, error) {
	c := env.cfg["bus"].(*busConfig)
	e, err := bus.StartEmbedded(c.Listen)
	if err != nil {
		return nil, err
	}
	env.natsURL = e.URL()
	env.log.Info("embedded NATS listening", "url", e.URL())
	return func(ctx context.Context) error {
		<-ctx.Done()
		return e.Close()
	}, nil
}
