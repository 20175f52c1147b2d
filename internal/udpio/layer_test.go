package udpio

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// syscallLayer matches the names of golang.org/x/sys/unix and syscall that
// only internal/udpio may use: batched datagram I/O (recvmmsg, sendmmsg
// and the single-datagram calls the batches replace), epoll, and the
// kernel's socket address forms (udpio.Sockaddr is the one codec).
var syscallLayer = regexp.MustCompile(`^(SYS_RECVMMSG|SYS_SENDMMSG|SYS_RECVFROM|SYS_SENDTO|SYS_RECVMSG|SYS_SENDMSG|` +
	`Recvmmsg|Sendmmsg|Recvfrom|Sendto|Recvmsg|Sendmsg|SendmsgN|SendmmsgBuffers|RecvmmsgBuffers|` +
	`Epoll.*|EPOLL.*|SYS_EPOLL.*|RawSockaddr.*|SockaddrInet4|SockaddrInet6|Mmsghdr|Msghdr)$`)

// layerExceptions are the files outside internal/udpio allowed to use
// those names, each with the reason.
var layerExceptions = map[string]string{}

// TestSyscallLayer keeps internal/udpio the only system-call layer for
// datagram sockets: it parses every .go file of the module (tests
// included) and fails on any use of those names elsewhere.
func TestSyscallLayer(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from %s: %v", root, err)
	}
	files, found := 0, 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "internal/udpio" || strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "vendor" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		files++
		for _, use := range layerUses(t, path) {
			found++
			if _, ok := layerExceptions[rel]; ok {
				continue
			}
			t.Errorf("%s:%s outside internal/udpio: use udpio (Set, Batch, Sockaddr, SendTo, RawSender) instead", rel, use)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("walked only %d .go files under %s", files, root)
	}
	// The exceptions must still be needed: an exception that no longer
	// matches anything is removed.
	for f := range layerExceptions {
		if len(layerUses(t, filepath.Join(root, f))) == 0 {
			t.Errorf("%s no longer uses the syscall layer: remove it from layerExceptions", f)
		}
	}
}

// layerUses returns "line: unix.Name" for each use in file path of a name
// from syscallLayer, qualified by an import of golang.org/x/sys/unix or
// syscall under any local name.
func layerUses(t *testing.T, path string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatalf("parse %s: %v", path, err)
	}
	pkgs := map[string]bool{}
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if p != "golang.org/x/sys/unix" && p != "syscall" {
			continue
		}
		name := p[strings.LastIndex(p, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		pkgs[name] = true
	}
	if len(pkgs) == 0 {
		return nil
	}
	var uses []string
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if id, ok := sel.X.(*ast.Ident); ok && pkgs[id.Name] && syscallLayer.MatchString(sel.Sel.Name) {
			uses = append(uses, strconv.Itoa(fset.Position(sel.Pos()).Line)+": "+id.Name+"."+sel.Sel.Name)
		}
		return true
	})
	return uses
}

// TestSyscallLayerCatches checks the check: it must flag each form of use.
func TestSyscallLayerCatches(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.go")
	src := `package x

import (
	sys "golang.org/x/sys/unix"
	"syscall"
)

// unix.EpollWait in a comment is fine.
var _ = "unix.SYS_SENDMMSG in a string is fine"

func f() {
	_, _ = sys.EpollCreate1(0)
	_ = sys.SYS_RECVMMSG
	var _ sys.RawSockaddrInet6
	var _ syscall.SockaddrInet4
	_ = sys.Close
}
`
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(layerUses(t, path), "; ")
	want := "12: sys.EpollCreate1; 13: sys.SYS_RECVMMSG; 14: sys.RawSockaddrInet6; 15: syscall.SockaddrInet4"
	if got != want {
		t.Fatalf("uses = %q, want %q", got, want)
	}
}
