package watcherapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// The WatcherAPI, with Hersh v0.2.0's routes and JSON keys:
//
//	GET  /watcher/status     {"state","isRunning","watcherID","uptime","lastUpdate"}
//	GET  /watcher/logs?type=all|effect|reduce|watch_error|context|state_fault|effect_result&limit=100
//	                         {"effectLogs","reduceLogs","watchErrorLogs","contextLogs","stateFaultLogs","effectResults"}
//	                         (each only when asked for and not empty: `{}` is a valid answer)
//	GET  /watcher/signals    {"varSigCount","userSigCount","watcherSigCount","totalPending","recentSignals","timestamp"}
//	POST /watcher/message    {"content":"..."} -> 200 {"status":"message sent","handled":bool,"reply":"..."}
//	                         400/503 {"error":"..."}
//	GET  /watcher/watching   {"watchedVars","count","timestamp"}
//	GET  /watcher/memoCache  {"entries","count","timestamp"}
//	GET  /watcher/varState   {"variables","count","timestamp"}
//	GET  /watcher/config     {"config":{"serverPort","signalChanCapacity","maxLogEntries","maxMemoEntries"},"timestamp"}
//
// Two additions, both extra keys Hersh's clients ignore: POST /watcher/message
// waits (up to MessageTimeout) until the managed function has handled the
// message, so its effect is visible as soon as the answer arrives, and says so
// in "handled", with the function's answer in "reply"; and
// /watcher/varState's "variables" holds the context values (Context.SetValue)
// as well as the watched variables, so a program's state can be read there.

const maxRecentSignals = 30

// StatusResponse is GET /watcher/status.
type StatusResponse struct {
	State      string    `json:"state"`
	IsRunning  bool      `json:"isRunning"`
	WatcherID  string    `json:"watcherID"`
	Uptime     string    `json:"uptime"`
	LastUpdate time.Time `json:"lastUpdate"`
}

// LogsResponse is GET /watcher/logs.
type LogsResponse struct {
	EffectLogs     []EffectLogEntry       `json:"effectLogs,omitempty"`
	ReduceLogs     []ReduceLogEntry       `json:"reduceLogs,omitempty"`
	WatchErrorLogs []WatchErrorLogEntry   `json:"watchErrorLogs,omitempty"`
	ContextLogs    []ContextValueLogEntry `json:"contextLogs,omitempty"`
	StateFaultLogs []StateFaultLogEntry   `json:"stateFaultLogs,omitempty"`
	EffectResults  []EffectResult         `json:"effectResults,omitempty"`
}

// SignalEntry is one recent signal.
type SignalEntry struct {
	Type      string    `json:"type"` // "var", "user" or "watcher"
	Content   string    `json:"content"`
	CreatedAt time.Time `json:"createdAt"`
}

// SignalsResponse is GET /watcher/signals.
type SignalsResponse struct {
	VarSigCount     int           `json:"varSigCount"`
	UserSigCount    int           `json:"userSigCount"`
	WatcherSigCount int           `json:"watcherSigCount"`
	TotalPending    int           `json:"totalPending"`
	RecentSignals   []SignalEntry `json:"recentSignals"`
	Timestamp       time.Time     `json:"timestamp"`
}

// MessageRequest is the body of POST /watcher/message.
type MessageRequest struct {
	Content string `json:"content"`
}

// MessageResponse is the answer to POST /watcher/message.
type MessageResponse struct {
	Status  string `json:"status"`
	Handled bool   `json:"handled"`
	Reply   string `json:"reply,omitempty"`
}

// WatchingResponse is GET /watcher/watching.
type WatchingResponse struct {
	WatchedVars []string  `json:"watchedVars"`
	Count       int       `json:"count"`
	Timestamp   time.Time `json:"timestamp"`
}

// MemoCacheResponse is GET /watcher/memoCache.
type MemoCacheResponse struct {
	Entries   map[string]any `json:"entries"`
	Count     int            `json:"count"`
	Timestamp time.Time      `json:"timestamp"`
}

// VarStateResponse is GET /watcher/varState.
type VarStateResponse struct {
	Variables map[string]any `json:"variables"`
	Count     int            `json:"count"`
	Timestamp time.Time      `json:"timestamp"`
}

// ConfigResponse is GET /watcher/config.
type ConfigResponse struct {
	Config    ConfigData `json:"config"`
	Timestamp time.Time  `json:"timestamp"`
}

// ConfigData is the watcher's configuration as GET /watcher/config shows it.
type ConfigData struct {
	ServerPort         int `json:"serverPort"`
	SignalChanCapacity int `json:"signalChanCapacity"`
	MaxLogEntries      int `json:"maxLogEntries"`
	MaxMemoEntries     int `json:"maxMemoEntries"`
}

// ErrorResponse is every error's body.
type ErrorResponse struct {
	Error string `json:"error"`
}

func (w *Watcher) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /watcher/status", w.handleStatus)
	mux.HandleFunc("GET /watcher/logs", w.handleLogs)
	mux.HandleFunc("GET /watcher/signals", w.handleSignals)
	mux.HandleFunc("POST /watcher/message", w.handleMessage)
	mux.HandleFunc("GET /watcher/watching", w.handleWatching)
	mux.HandleFunc("GET /watcher/memoCache", w.handleMemoCache)
	mux.HandleFunc("GET /watcher/varState", w.handleVarState)
	mux.HandleFunc("GET /watcher/config", w.handleConfig)
	return mux
}

func writeJSON(rw http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		data, _ = json.Marshal(ErrorResponse{Error: "cannot encode the answer: " + err.Error()})
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_, _ = rw.Write(append(data, '\n'))
}

func (w *Watcher) handleStatus(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	state, last := w.state, w.lastUpdate
	w.mu.Unlock()
	if last.IsZero() {
		last = time.Now().UTC()
	}
	writeJSON(rw, http.StatusOK, StatusResponse{
		State:      string(state),
		IsRunning:  w.running.Load(),
		WatcherID:  w.cfg.WatcherID,
		Uptime:     time.Since(w.startedAt).Round(time.Millisecond).String(),
		LastUpdate: last,
	})
}

func (w *Watcher) handleLogs(rw http.ResponseWriter, r *http.Request) {
	kind := r.URL.Query().Get("type")
	if kind == "" {
		kind = "all"
	}
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			limit = n
		}
	}
	all := kind == "all"
	var answer LogsResponse
	b := w.logs
	b.mu.Lock()
	if all || kind == "effect" {
		answer.EffectLogs = b.effect.last(limit)
	}
	if all || kind == "reduce" {
		answer.ReduceLogs = b.reduce.last(limit)
	}
	if all || kind == "watch_error" {
		answer.WatchErrorLogs = b.watchErrors.last(limit)
	}
	if all || kind == "context" {
		answer.ContextLogs = b.context.last(limit)
	}
	if all || kind == "state_fault" {
		answer.StateFaultLogs = b.stateFaults.last(limit)
	}
	if all || kind == "effect_result" {
		answer.EffectResults = b.results.last(limit)
	}
	b.mu.Unlock()
	switch kind {
	case "all", "effect", "reduce", "watch_error", "context", "state_fault", "effect_result":
		writeJSON(rw, http.StatusOK, answer)
	default:
		writeJSON(rw, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf(
			"invalid log type: %s (use all, effect, reduce, watch_error, context, state_fault, effect_result)", kind)})
	}
}

func (w *Watcher) handleSignals(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	recent := append([]SignalEntry{}, w.recent...)
	w.mu.Unlock()
	users, vars := len(w.userSig), len(w.varSig)
	writeJSON(rw, http.StatusOK, SignalsResponse{
		VarSigCount:   vars,
		UserSigCount:  users,
		TotalPending:  users + vars,
		RecentSignals: recent,
		Timestamp:     time.Now().UTC(),
	})
}

func (w *Watcher) handleMessage(rw http.ResponseWriter, r *http.Request) {
	var req MessageRequest
	if err := json.NewDecoder(http.MaxBytesReader(rw, r.Body, 1<<20)).Decode(&req); err != nil {
		writeJSON(rw, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf("invalid request body: %v", err)})
		return
	}
	if req.Content == "" {
		writeJSON(rw, http.StatusBadRequest, ErrorResponse{Error: "message content cannot be empty"})
		return
	}
	env, err := w.enqueue(req.Content)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, ErrQueueFull) {
			code = http.StatusTooManyRequests
		}
		writeJSON(rw, code, ErrorResponse{Error: fmt.Sprintf("failed to send message: %v", err)})
		return
	}
	timer := time.NewTimer(w.cfg.MessageTimeout)
	defer timer.Stop()
	select {
	case answer := <-env.done:
		if answer.stopped {
			writeJSON(rw, http.StatusServiceUnavailable, ErrorResponse{Error: "failed to send message: " + ErrStopped.Error()})
			return
		}
		writeJSON(rw, http.StatusOK, MessageResponse{Status: "message sent", Handled: true, Reply: answer.text})
	case <-timer.C:
		writeJSON(rw, http.StatusOK, MessageResponse{Status: "message sent", Handled: false})
	case <-r.Context().Done():
	}
}

func (w *Watcher) handleWatching(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	names := append([]string{}, w.varOrder...)
	w.mu.Unlock()
	writeJSON(rw, http.StatusOK, WatchingResponse{WatchedVars: names, Count: len(names), Timestamp: time.Now().UTC()})
}

func (w *Watcher) handleMemoCache(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	entries := make(map[string]any, len(w.memo))
	for k, v := range w.memo {
		entries[k] = jsonSafe(v)
	}
	w.mu.Unlock()
	writeJSON(rw, http.StatusOK, MemoCacheResponse{Entries: entries, Count: len(entries), Timestamp: time.Now().UTC()})
}

func (w *Watcher) handleVarState(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	variables := make(map[string]any, len(w.values)+len(w.vars))
	for k, v := range w.values {
		variables[k] = jsonSafe(v)
	}
	for name, v := range w.vars {
		if v.err != nil {
			variables[name] = map[string]any{"value": jsonSafe(v.value), "error": v.err.Error()}
		} else {
			variables[name] = jsonSafe(v.value)
		}
	}
	w.mu.Unlock()
	writeJSON(rw, http.StatusOK, VarStateResponse{Variables: variables, Count: len(variables), Timestamp: time.Now().UTC()})
}

func (w *Watcher) handleConfig(rw http.ResponseWriter, _ *http.Request) {
	port := 0
	if _, p, ok := cutLast(w.cfg.Addr, ":"); ok {
		port, _ = strconv.Atoi(p)
	}
	writeJSON(rw, http.StatusOK, ConfigResponse{
		Config: ConfigData{
			ServerPort:         port,
			SignalChanCapacity: w.cfg.SignalChanCapacity,
			MaxLogEntries:      w.cfg.MaxLogEntries,
			MaxMemoEntries:     w.cfg.MaxMemoEntries,
		},
		Timestamp: time.Now().UTC(),
	})
}

func cutLast(s, sep string) (before, after string, found bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

// jsonSafe returns v, or a description of it when it cannot be encoded as JSON
// (a Memo may hold anything: a client, a channel).
func jsonSafe(v any) any {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("<%T>", v)
	}
	return json.RawMessage(data)
}
