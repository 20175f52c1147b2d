package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/signal"
)

type tokenConfig struct {
	TokenKey  string        `yaml:"token-key"`
	Room      string        `yaml:"room"`
	Identity  string        `yaml:"identity"`
	Publish   bool          `yaml:"publish"`
	Subscribe bool          `yaml:"subscribe"`
	TTL       time.Duration `yaml:"ttl"`
	Relay     bool          `yaml:"relay"`
}

// runToken mints an access token for the signal role (docs/signal.md).
func runToken(_ context.Context, args []string) error { return mintToken(os.Stdout, args) }

func mintToken(w io.Writer, args []string) error {
	cfg := tokenConfig{Publish: true, Subscribe: true, TTL: 24 * time.Hour}
	fs := newFlagSet("token", "token --token-key KEY --room ROOM --identity NAME [--publish=false] [--subscribe=false] [--ttl 24h]")
	var configFile string
	fs.StringVar(&configFile, "config", "", "YAML configuration `file` (keys are the flag names)")
	fs.StringVar(&cfg.TokenKey, "token-key", cfg.TokenKey, "the signal role's HMAC-SHA256 token `key` (env TRAVERSE_TOKEN_KEY)")
	fs.StringVar(&cfg.Room, "room", cfg.Room, "`room` the token admits to")
	fs.StringVar(&cfg.Identity, "identity", cfg.Identity, "participant `name` others see")
	fs.BoolVar(&cfg.Publish, "publish", cfg.Publish, "allow sending audio, video and data")
	fs.BoolVar(&cfg.Subscribe, "subscribe", cfg.Subscribe, "allow receiving the others' tracks")
	fs.DurationVar(&cfg.TTL, "ttl", cfg.TTL, "how long the token is valid")
	fs.BoolVar(&cfg.Relay, "relay", cfg.Relay, "also print, on a second line, the relay client's link secret (hex) for this token: the two lines are a relay client's credentials (docs/relay-protocol.md)")
	var c common
	_, err := loadFlags(fs, args, &cfg, &c)
	if err != nil {
		return err
	}
	if err := cfg.check(); err != nil {
		return err
	}
	now := time.Now()
	tok, err := signal.MintToken([]byte(cfg.TokenKey), signal.Claims{Room: cfg.Room, Identity: cfg.Identity,
		Publish: cfg.Publish, Subscribe: cfg.Subscribe, IssuedAt: now.Unix(), Expires: now.Add(cfg.TTL).Unix()})
	if err != nil {
		return err
	}
	if cfg.Relay {
		_, err = fmt.Fprintf(w, "%s\n%x\n", tok, relaywire.ClientSecret([]byte(cfg.TokenKey), tok))
		return err
	}
	_, err = fmt.Fprintln(w, tok)
	return err
}

// check refuses what would mint a token no server takes, naming the flag.
func (c *tokenConfig) check() error {
	switch {
	case c.TokenKey == "":
		return errors.New("--token-key is required")
	case len(c.TokenKey) < 16:
		return errors.New("--token-key must be at least 16 bytes")
	case c.Room == "":
		return errors.New("--room is required")
	case !signal.ValidRoom(c.Room):
		return fmt.Errorf("--room %.80q: want 1-%d letters, digits, '-' or '_' (the bus refuses others)", c.Room, signal.MaxRoomLen)
	case c.Identity == "":
		return errors.New("--identity is required")
	case !signal.ValidIdentity(c.Identity):
		return fmt.Errorf("--identity %.80q: want 1-%d letters, digits, '-', '_', '.', '@' or ':'", c.Identity, signal.MaxIdentityLen)
	case c.TTL <= 0:
		return fmt.Errorf("--ttl %v: must be positive", c.TTL)
	}
	return nil
}

func init() {
	register(command{name: "token", summary: "mint an access token for the signal role (room, identity, rights, expiry)", run: runToken})
}
