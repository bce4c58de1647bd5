// Package watcherapi is a small, dependency-free stand-in for the Hersh reactive
// framework (github.com/HershyOrg/hersh v0.2.0), which the Go module proxy does
// not serve. It keeps Hersh's shape, so the examples read like Hersh programs:
//
//   - Managed execution: one managed function, run serially on every trigger
//     (the first run, a message, a change of a watched variable);
//   - WatchCall (a polled variable), WatchFlow (a channel variable) and
//     WatchTick (a ticker built on WatchFlow), registered on first use;
//   - Memo (a per-process cache) and a HershContext-like key/value store
//     (Context.GetValue/SetValue/UpdateValue), saved as JSON in the state
//     directory (/state) after every run that changed it, and loaded at start;
//   - the WatcherAPI on :8080, with Hersh's routes and JSON keys
//     (see server.go).
//
// Run blocks until its context is cancelled (wire it to SIGTERM), then stops
// the watches, runs the cleanup function, saves the state and closes the
// server: a program's main can simply exit 0 afterwards.
package watcherapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// State is the watcher's state, as GET /watcher/status reports it.
type State string

// The states, named as Hersh names them.
const (
	StateNotRun  State = "NotRun"
	StateInitRun State = "InitRun"
	StateReady   State = "Ready"
	StateRunning State = "Running"
	StateStopped State = "Stopped"
)

// Config configures a Watcher. DefaultConfig fills it from the environment.
type Config struct {
	// Addr is where the WatcherAPI listens (":8080": every interface).
	Addr string
	// WatcherID names this watcher in GET /watcher/status.
	WatcherID string
	// StateDir is where the context values are saved ("" keeps them in memory only).
	StateDir string
	// StateFile is the file name inside StateDir.
	StateFile string
	// MaxLogEntries bounds each log kept for GET /watcher/logs.
	MaxLogEntries int
	// MaxMemoEntries bounds the Memo cache.
	MaxMemoEntries int
	// SignalChanCapacity bounds the queue of messages not yet handled.
	SignalChanCapacity int
	// MessageTimeout is how long POST /watcher/message waits for the managed
	// function to handle the message before answering anyway ("handled": false).
	MessageTimeout time.Duration
	// ShutdownTimeout bounds closing the HTTP server at stop.
	ShutdownTimeout time.Duration
	// Stdout receives the log lines (Context.Log) as well; nil discards them.
	Stdout io.Writer
}

// DefaultConfig is the configuration for a program named name, with the
// environment's overrides: WATCHER_ADDR (":8080"), WATCHER_ID (name),
// STATE_DIR ("/state").
func DefaultConfig(name string) Config {
	return Config{
		Addr:               envOr("WATCHER_ADDR", ":8080"),
		WatcherID:          envOr("WATCHER_ID", name),
		StateDir:           envOr("STATE_DIR", "/state"),
		StateFile:          "context.json",
		MaxLogEntries:      1000,
		MaxMemoEntries:     1000,
		SignalChanCapacity: 1000,
		MessageTimeout:     5 * time.Second,
		ShutdownTimeout:    2 * time.Second,
		Stdout:             os.Stdout,
	}
}

func envOr(key, fallback string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return fallback
}

// Message is a command sent to the program (POST /watcher/message).
type Message struct {
	Content    string
	ReceivedAt time.Time
}

// ManagedFunc is the program's one managed function. msg is nil unless a
// message triggered this run.
type ManagedFunc func(msg *Message, ctx *Context) error

// ErrStopped is returned for messages sent to a watcher that is stopping.
var ErrStopped = errors.New("the watcher is stopping")

// ErrQueueFull is returned when SignalChanCapacity messages are already waiting.
var ErrQueueFull = errors.New("too many messages waiting")

// reply is what the managed function answered to one message.
type reply struct {
	text    string
	stopped bool
}

// envelope carries a message to the loop and its reply back.
type envelope struct {
	msg  *Message
	done chan reply // buffered (1): the loop never blocks on it
}

// Watcher runs one managed function and serves the WatcherAPI.
type Watcher struct {
	cfg       Config
	name      string
	fn        ManagedFunc
	cleanup   func(*Context)
	startedAt time.Time
	logs      *logBook
	running   atomic.Bool

	userSig chan *envelope
	varSig  chan string

	watchCtx    context.Context
	watchCancel context.CancelFunc
	watchers    sync.WaitGroup

	mu          sync.Mutex // guards everything below
	state       State
	stopping    bool
	lastUpdate  time.Time
	values      map[string]any
	dirty       bool
	saveProblem string
	vars        map[string]*watchVar
	varOrder    []string
	memo        map[string]any
	memoOrder   []string
	recent      []SignalEntry
}

// New makes a watcher; give it a managed function with Manage, then Run it.
func New(cfg Config) *Watcher {
	def := DefaultConfig(cfg.WatcherID)
	if cfg.Addr == "" {
		cfg.Addr = def.Addr
	}
	if cfg.StateFile == "" {
		cfg.StateFile = def.StateFile
	}
	if cfg.MaxLogEntries <= 0 {
		cfg.MaxLogEntries = def.MaxLogEntries
	}
	if cfg.MaxMemoEntries <= 0 {
		cfg.MaxMemoEntries = def.MaxMemoEntries
	}
	if cfg.SignalChanCapacity <= 0 {
		cfg.SignalChanCapacity = def.SignalChanCapacity
	}
	if cfg.MessageTimeout <= 0 {
		cfg.MessageTimeout = def.MessageTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = def.ShutdownTimeout
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	return &Watcher{
		cfg:         cfg,
		startedAt:   time.Now(),
		logs:        newLogBook(cfg.MaxLogEntries),
		userSig:     make(chan *envelope, cfg.SignalChanCapacity),
		varSig:      make(chan string, 4096),
		watchCtx:    watchCtx,
		watchCancel: cancel,
		state:       StateNotRun,
		values:      map[string]any{},
		vars:        map[string]*watchVar{},
		memo:        map[string]any{},
	}
}

// Manage sets the managed function; name appears in the logs.
func (w *Watcher) Manage(fn ManagedFunc, name string) *Watcher {
	w.fn, w.name = fn, name
	return w
}

// Cleanup sets a function run once at stop, after the last run and before the state is saved.
func (w *Watcher) Cleanup(fn func(ctx *Context)) *Watcher {
	w.cleanup = fn
	return w
}

// Handler is the WatcherAPI as an http.Handler (Run serves it on Config.Addr).
func (w *Watcher) Handler() http.Handler { return w.routes() }

// SendMessage queues a message for the managed function without waiting for it.
func (w *Watcher) SendMessage(content string) error {
	_, err := w.enqueue(content)
	return err
}

func (w *Watcher) enqueue(content string) (*envelope, error) {
	env := &envelope{msg: &Message{Content: content, ReceivedAt: time.Now().UTC()}, done: make(chan reply, 1)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return nil, ErrStopped
	}
	select {
	case w.userSig <- env:
	default:
		return nil, ErrQueueFull
	}
	w.noteSignal("user", content)
	return env, nil
}

// noteSignal remembers a signal for GET /watcher/signals (w.mu held).
func (w *Watcher) noteSignal(kind, content string) {
	w.recent = append(w.recent, SignalEntry{Type: kind, Content: content, CreatedAt: time.Now().UTC()})
	if len(w.recent) > maxRecentSignals {
		w.recent = append(w.recent[:0], w.recent[len(w.recent)-maxRecentSignals:]...)
	}
}

func (w *Watcher) setState(next State, signal string) {
	w.mu.Lock()
	prev := w.state
	w.state = next
	w.mu.Unlock()
	w.logs.logReduce(prev, next, signal)
}

func (w *Watcher) printf(format string, args ...any) {
	fmt.Fprintf(w.cfg.Stdout, time.Now().UTC().Format("2006-01-02T15:04:05.000Z ")+format+"\n", args...)
}

// Run loads the saved state, runs the managed function once (InitRun), serves
// the WatcherAPI and runs the function on every trigger until ctx is done; then
// it stops cleanly (see the package comment). It returns an error only if the
// watcher could not start or the server failed.
func (w *Watcher) Run(ctx context.Context) error {
	if w.fn == nil {
		return errors.New("watcherapi: no managed function (call Manage first)")
	}
	w.loadState()

	listener, err := net.Listen("tcp", w.cfg.Addr)
	if err != nil {
		return fmt.Errorf("watcherapi: listen on %s: %w", w.cfg.Addr, err)
	}

	w.running.Store(true)
	w.setState(StateInitRun, "watcher: start")
	w.mu.Lock()
	w.noteSignal("watcher", "InitRun")
	w.mu.Unlock()
	w.run(Trigger{IsWatcherSig: true}, nil, "watcher: InitRun")

	server := &http.Server{Handler: w.routes(), ReadHeaderTimeout: 10 * time.Second}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveErr := make(chan error, 1)
	go func() {
		err := server.Serve(listener)
		if !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
			cancel()
		}
	}()
	w.printf("[WatcherAPI] %s (%s) serving on %s", w.cfg.WatcherID, w.name, listener.Addr())

	w.loop(runCtx)
	w.stop()

	shutdownCtx, done := context.WithTimeout(context.Background(), w.cfg.ShutdownTimeout)
	defer done()
	_ = server.Shutdown(shutdownCtx)
	w.printf("[WatcherAPI] %s stopped", w.cfg.WatcherID)
	select {
	case err := <-serveErr:
		return fmt.Errorf("watcherapi: server: %w", err)
	default:
		return nil
	}
}

// loop runs the managed function on each trigger until ctx is done.
// Messages go before variable changes; variable changes are batched.
func (w *Watcher) loop(ctx context.Context) {
	for {
		select {
		case env := <-w.userSig:
			w.runMessage(env)
			continue
		default:
		}
		select {
		case <-ctx.Done():
			return
		case env := <-w.userSig:
			w.runMessage(env)
		case name := <-w.varSig:
			names := []string{name}
		drain:
			for {
				select {
				case more := <-w.varSig:
					names = append(names, more)
				default:
					break drain
				}
			}
			w.mu.Lock()
			for _, n := range names {
				if v := w.vars[n]; v != nil {
					v.pending = false
				}
			}
			w.mu.Unlock()
			w.run(Trigger{VarSigNames: names}, nil, fmt.Sprintf("var: %v", names))
		}
	}
}

func (w *Watcher) runMessage(env *envelope) {
	text := w.run(Trigger{IsUserSig: true}, env.msg, "user: "+env.msg.Content)
	env.done <- reply{text: text}
}

// run runs the managed function once and returns its reply to a message.
func (w *Watcher) run(trigger Trigger, msg *Message, signal string) string {
	w.mu.Lock()
	prev := w.state
	w.mu.Unlock()
	if prev != StateInitRun {
		w.setState(StateRunning, signal)
	}
	c := &Context{w: w, msg: msg, trigger: trigger}
	started := time.Now()
	err := w.call(func() error { return w.fn(msg, c) }, prev)
	w.logs.logResult(signal, err, time.Since(started))
	if err != nil {
		w.printf("[%s] %s failed: %v", w.name, signal, err)
		if c.reply == "" {
			c.reply = "error: " + err.Error()
		}
	}
	w.saveState(false)
	w.mu.Lock()
	w.lastUpdate = time.Now().UTC()
	w.mu.Unlock()
	w.setState(StateReady, "done: "+signal)
	return c.reply
}

// call runs f, turning a panic into an error (and a state fault log entry).
func (w *Watcher) call(f func() error, state State) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
			w.logs.logStateFault(state, StateReady, "the managed function panicked", err)
		}
	}()
	return f()
}

// stop ends the watches, answers waiting messages, runs the cleanup and saves the state.
func (w *Watcher) stop() {
	w.mu.Lock()
	w.stopping = true
	w.noteSignal("watcher", "Stop")
	w.mu.Unlock()
	w.watchCancel()
	finished := make(chan struct{})
	go func() { w.watchers.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(time.Second): // a poll stuck in IO must not hold the stop up
	}
	for {
		select {
		case env := <-w.userSig:
			env.done <- reply{stopped: true}
			continue
		default:
		}
		break
	}
	if w.cleanup != nil {
		c := &Context{w: w, trigger: Trigger{IsWatcherSig: true}}
		if err := w.call(func() error { w.cleanup(c); return nil }, StateReady); err != nil {
			w.printf("[%s] cleanup failed: %v", w.name, err)
		}
	}
	w.saveState(true)
	w.setState(StateStopped, "watcher: stop")
	w.running.Store(false)
}
