package turn

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
)

// ParseUser parses one NAME:PASSWORD credential (a --user flag, a line of
// the users file). The name must not be empty; the password may be, and
// may itself hold colons.
func ParseUser(s string) (name, pass string, err error) {
	name, pass, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return "", "", fmt.Errorf("%w: want NAME:PASSWORD, got %q", ErrUsers, s)
	}
	return name, pass, nil
}

// ParseUsers reads a users file: one NAME:PASSWORD per line; blank lines
// and lines starting with # are skipped, surrounding spaces trimmed. A
// later line for the same name wins. where names the file in errors
// ("users.txt:3: ...").
func ParseUsers(r io.Reader, where string) (map[string]string, error) {
	users := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, pass, err := ParseUser(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", where, n, err)
		}
		users[name] = pass
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUsers, where, err)
	}
	return users, nil
}

// LoadUsers merges the static users with those of the users file at path
// (none when path is empty); the file's entries win.
func LoadUsers(static map[string]string, path string) (map[string]string, error) {
	users := maps.Clone(static)
	if users == nil {
		users = map[string]string{}
	}
	if path == "" {
		return users, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUsers, err)
	}
	defer f.Close()
	file, err := ParseUsers(f, path)
	if err != nil {
		return nil, err
	}
	maps.Copy(users, file)
	return users, nil
}

// ReloadUsers reads Config.UsersFile again and replaces the long-term
// credential users with it and Config.Users. On an error the users stay
// as they were. Run calls it on every value of Config.ReloadUsers.
func (s *Server) ReloadUsers() (int, error) {
	users, err := LoadUsers(s.cfg.Users, s.cfg.UsersFile)
	if err != nil {
		return 0, err
	}
	s.SetUsers(users)
	return len(users), nil
}
