package hershy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A live `hershy serve --runtime fake` for the tests: the real Host, with no
// containers. The command is the `hershy` console script on PATH (pip
// install -e . puts it there), or $HERSHY_BIN.

const (
	serviceName = "hershy.v1.ProgramService"
	// startupTimeout: the console script imports grpcio before it serves.
	startupTimeout = 30 * time.Second
	// shutdownTimeout: SIGTERM must end the Host, with status 0, this fast.
	shutdownTimeout = 10 * time.Second
)

// host is one `hershy serve` process.
type host struct {
	grpcAddr, httpAddr, dataDir string
	logPath                     string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the exit status, once exited is closed
}

func hershyCommand() (string, error) {
	if bin := os.Getenv("HERSHY_BIN"); bin != "" {
		return bin, nil
	}
	bin, err := exec.LookPath("hershy")
	if err != nil {
		return "", errors.New("the `hershy` console script is not on PATH: run scripts/setup.sh " +
			"(pip install -e .), or set HERSHY_BIN")
	}
	return bin, nil
}

// freeAddr is a loopback address nobody listens on right now.
func freeAddr() (string, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer listener.Close()
	return listener.Addr().String(), nil
}

// newHost picks free ports under dir; start runs it.
func newHost(dir string) (*host, error) {
	grpcAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	return &host{
		grpcAddr: grpcAddr,
		httpAddr: httpAddr,
		dataDir:  filepath.Join(dir, "data"),
		logPath:  filepath.Join(dir, "hershy.log"),
	}, nil
}

// start runs the Host (again, on the same data dir and ports) and waits
// until its health check says SERVING.
func (h *host) start() error {
	bin, err := hershyCommand()
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	// Tokens on, as in production: the admin's token comes from the file the Host
	// writes on its first start (the same file across restarts of one data dir).
	tokenFile := h.dataDir + ".admin-token"
	cmd := exec.Command(bin, "serve", "--runtime", "fake",
		"--data-dir", h.dataDir, "--grpc-addr", h.grpcAddr, "--http-addr", h.httpAddr,
		"--admin-token-file", tokenFile)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	h.cmd, h.exited = cmd, make(chan struct{})
	go func() {
		h.err = cmd.Wait()
		close(h.exited)
	}()
	if err := h.waitServing(); err != nil {
		h.kill()
		return err
	}
	secret, err := os.ReadFile(tokenFile)
	if err != nil {
		h.kill()
		return fmt.Errorf("the admin's token file: %w", err)
	}
	adminTokens.Store(h.grpcAddr, strings.TrimSpace(string(secret)))
	return nil
}

// adminTokens: each live Host's admin token, by its gRPC address (for dial).
var adminTokens sync.Map

func (h *host) waitServing() error {
	conn, err := grpc.NewClient(h.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(startupTimeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		select {
		case <-h.exited:
			return fmt.Errorf("hershy serve exited (%v) before serving; log:\n%s", h.err, h.log())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		response, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: serviceName})
		cancel()
		if err == nil && response.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = response.GetStatus().String()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("hershy serve on %s not SERVING within %s (last: %s); log:\n%s",
		h.grpcAddr, startupTimeout, last, h.log())
}

// stop sends SIGTERM and waits for a clean exit.
func (h *host) stop() error {
	if h.cmd == nil {
		return nil
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(shutdownTimeout):
		h.kill()
		return fmt.Errorf("hershy serve did not exit within %s of SIGTERM; log:\n%s", shutdownTimeout, h.log())
	}
	h.cmd = nil
	if h.err != nil {
		return fmt.Errorf("hershy serve exited with %v after SIGTERM; log:\n%s", h.err, h.log())
	}
	return nil
}

// kill is the last resort: nothing is left behind.
func (h *host) kill() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Kill()
	<-h.exited
	h.cmd = nil
}

// log is the end of what the Host wrote, for failure messages.
func (h *host) log() string {
	data, err := os.ReadFile(h.logPath)
	if err != nil {
		return fmt.Sprintf("<no log: %v>", err)
	}
	text := string(data)
	if len(text) > 8000 {
		text = "…" + text[len(text)-8000:]
	}
	return strings.TrimSpace(text)
}

// The Host most tests share, started by TestMain.
var (
	shared     *host
	sharedOnce sync.Once
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "hershy-go-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shared, err = newHost(dir)
	if err == nil {
		err = shared.start()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start a live Hershy for the tests: %v\n", err)
		return 1
	}
	code := m.Run()
	if err := shared.stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		shared.kill()
		if code == 0 {
			code = 1
		}
	}
	return code
}

// ownHost is a Host of the test's own (e.g. to restart it), stopped at the end.
func ownHost(t *testing.T) *host {
	t.Helper()
	h, err := newHost(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Error(err)
		}
		h.kill()
	})
	return h
}
