package watcherapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"time"
)

// Trigger says what started the current run (Hersh's TriggeredSignal).
type Trigger struct {
	IsUserSig    bool     // a message
	IsWatcherSig bool     // the first run (InitRun), or the cleanup at stop
	VarSigNames  []string // the watched variables that changed
}

// Value is a watched variable's current value (Hersh's HershValue).
type Value struct {
	Value   any
	Error   error
	VarName string
}

// IsError reports whether the variable's last update failed.
func (v Value) IsError() bool { return v.Error != nil }

// IsZero reports whether the variable has no value yet.
func (v Value) IsZero() bool { return v.Value == nil }

// IsValid reports whether the variable has a value and no error.
func (v Value) IsValid() bool { return !v.IsError() && !v.IsZero() }

// FlowValue is one item of a WatchFlow channel: a value, or an error.
type FlowValue struct {
	V any
	E error
}

// Tick is a WatchTick's value.
type Tick struct {
	Time      time.Time `json:"time"`
	TickCount int64     `json:"tickCount"` // 1 for the first tick
	VarName   string    `json:"-"`
}

// IsZero reports whether no tick has happened yet.
func (t Tick) IsZero() bool { return t.TickCount == 0 }

// watchVar is one registered watched variable.
type watchVar struct {
	kind    string // "call" or "flow"
	value   any
	err     error
	pending bool // a signal for it is queued
}

// Context is what the managed function gets on each run: the trigger, the
// persistent values, the watches, Memo and logging (Hersh's HershContext).
// Use it only inside the run it was given to.
type Context struct {
	w       *Watcher
	msg     *Message
	trigger Trigger
	reply   string
}

// WatcherID is the watcher's id.
func (c *Context) WatcherID() string { return c.w.cfg.WatcherID }

// Message is the message that triggered this run, or nil.
func (c *Context) Message() *Message { return c.msg }

// Trigger says what started this run.
func (c *Context) Trigger() Trigger { return c.trigger }

// Triggered reports whether the watched variable name changed for this run.
func (c *Context) Triggered(name string) bool {
	for _, n := range c.trigger.VarSigNames {
		if n == name {
			return true
		}
	}
	return false
}

// Log records a line in the effect log (GET /watcher/logs?type=effect) and prints it.
func (c *Context) Log(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	c.w.logs.logEffect(line)
	c.w.printf("[%s] %s", c.w.name, line)
}

// Reply sets the answer to the message of this run (the "reply" of POST /watcher/message).
func (c *Context) Reply(format string, args ...any) { c.reply = fmt.Sprintf(format, args...) }

// --- persistent values ------------------------------------------------------------

// GetValue returns the value stored under key, or nil. Values loaded from the
// state file are JSON values: numbers are int64 or float64 (use Int and Float).
func (c *Context) GetValue(key string) any {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	return c.w.values[key]
}

// SetValue stores a value (JSON-encodable) under key; it is saved to the state
// file at the end of the run.
func (c *Context) SetValue(key string, value any) {
	c.w.mu.Lock()
	old, existed := c.w.values[key]
	if existed && reflect.DeepEqual(old, value) {
		c.w.mu.Unlock()
		return
	}
	c.w.values[key] = value
	c.w.dirty = true
	c.w.mu.Unlock()
	operation := "updated"
	if !existed {
		operation = "initialized"
	}
	c.w.logs.logContext(key, old, value, operation)
}

// UpdateValue stores update(current value) under key and returns it.
func (c *Context) UpdateValue(key string, update func(current any) any) any {
	next := update(c.GetValue(key))
	c.SetValue(key, next)
	return next
}

// Int is the value under key as an integer (0 if absent or not a number).
func (c *Context) Int(key string) int64 {
	switch v := c.GetValue(key).(type) {
	case int:
		return int64(v)
	case int64:
		return v
	case float64:
		return int64(v)
	case json.Number:
		n, _ := v.Int64()
		return n
	}
	return 0
}

// Float is the value under key as a float (0 if absent or not a number).
func (c *Context) Float(key string) float64 {
	switch v := c.GetValue(key).(type) {
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case float64:
		return v
	case json.Number:
		f, _ := v.Float64()
		return f
	}
	return 0
}

// Bool is the value under key as a bool (false if absent).
func (c *Context) Bool(key string) bool {
	b, _ := c.GetValue(key).(bool)
	return b
}

// String is the value under key as a string ("" if absent).
func (c *Context) String(key string) string {
	s, _ := c.GetValue(key).(string)
	return s
}

// StateDir is the directory the state is saved in ("" if none): a program may
// keep its own files there too (it is the only writable place).
func (c *Context) StateDir() string { return c.w.cfg.StateDir }

// --- Memo ---------------------------------------------------------------------------

// Memo returns the value compute gave the first time it was asked for name in
// this process (Hersh's Memo). Values appear in GET /watcher/memoCache.
func (c *Context) Memo(name string, compute func() any) any {
	w := c.w
	w.mu.Lock()
	if v, ok := w.memo[name]; ok {
		w.mu.Unlock()
		return v
	}
	w.mu.Unlock()
	v := compute()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.memo[name]; !ok {
		if len(w.memoOrder) >= w.cfg.MaxMemoEntries {
			delete(w.memo, w.memoOrder[0])
			w.memoOrder = w.memoOrder[1:]
		}
		w.memoOrder = append(w.memoOrder, name)
	}
	w.memo[name] = v
	return v
}

// --- watches -------------------------------------------------------------------------

// WatchCall polls: every interval it calls poll with the variable's previous
// value (nil at first); when poll says changed, the variable takes the new
// value and the managed function runs. The first poll is at once. It returns
// the variable's current value (zero until the first poll finishes).
func (c *Context) WatchCall(name string, interval time.Duration, poll func(prev any) (next any, changed bool, err error)) Value {
	w := c.w
	if w.register(name, "call") {
		w.watchers.Add(1)
		go func() {
			defer w.watchers.Done()
			ticker := time.NewTicker(interval)
			defer ticker.Stop()
			for {
				prev, _ := w.varValue(name)
				next, changed, err := safePoll(poll, prev)
				if err != nil {
					w.logs.logWatchError(name, "execute_compute_func", err)
					w.update(name, prev, err)
				} else if changed {
					w.update(name, next, nil)
				}
				select {
				case <-w.watchCtx.Done():
					return
				case <-ticker.C:
				}
			}
		}()
	}
	return c.value(name)
}

// WatchFlow watches a channel: source is called once, with a context that ends
// when the watcher stops; every item it sends becomes the variable's value and
// runs the managed function (the latest item wins if several arrive during a run).
func (c *Context) WatchFlow(name string, source func(ctx context.Context) (<-chan FlowValue, error)) Value {
	w := c.w
	if w.register(name, "flow") {
		w.watchers.Add(1)
		go func() {
			defer w.watchers.Done()
			ch, err := source(w.watchCtx)
			if err != nil {
				w.logs.logWatchError(name, "get_compute_func", err)
				w.update(name, nil, err)
				return
			}
			for {
				select {
				case <-w.watchCtx.Done():
					return
				case item, ok := <-ch:
					if !ok {
						return
					}
					if item.E != nil {
						w.logs.logWatchError(name, "execute_compute_func", item.E)
						prev, _ := w.varValue(name)
						w.update(name, prev, item.E)
					} else {
						w.update(name, item.V, nil)
					}
				}
			}
		}()
	}
	return c.value(name)
}

// WatchTick is a ticker (Hersh's hutil.WatchTick): the first tick at once,
// then one every interval.
func (c *Context) WatchTick(name string, interval time.Duration) Tick {
	v := c.WatchFlow(name, func(ctx context.Context) (<-chan FlowValue, error) {
		ch := make(chan FlowValue, 1)
		go func() {
			ticker := time.NewTicker(interval)
			defer ticker.Stop()
			for count := int64(1); ; count++ {
				select {
				case ch <- FlowValue{V: Tick{Time: time.Now().UTC(), TickCount: count}}:
				case <-ctx.Done():
					return
				}
				select {
				case <-ticker.C:
				case <-ctx.Done():
					return
				}
			}
		}()
		return ch, nil
	})
	tick, _ := v.Value.(Tick)
	tick.VarName = name
	return tick
}

func (c *Context) value(name string) Value {
	v, err := c.w.varValue(name)
	return Value{Value: v, Error: err, VarName: name}
}

// register adds a watched variable; false if it exists (or the watcher is stopping).
func (w *Watcher) register(name, kind string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.vars[name]; ok || w.stopping {
		return false
	}
	w.vars[name] = &watchVar{kind: kind}
	w.varOrder = append(w.varOrder, name)
	return true
}

func (w *Watcher) varValue(name string) (any, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if v := w.vars[name]; v != nil {
		return v.value, v.err
	}
	return nil, nil
}

// update sets a variable and queues one signal for it (at most one is pending).
func (w *Watcher) update(name string, value any, err error) {
	w.mu.Lock()
	v := w.vars[name]
	v.value, v.err = value, err
	queue := !v.pending
	v.pending = true
	if queue {
		w.noteSignal("var", name)
	}
	w.mu.Unlock()
	if queue {
		select {
		case w.varSig <- name:
		case <-w.watchCtx.Done():
		}
	}
}

func safePoll(poll func(any) (any, bool, error), prev any) (next any, changed bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return poll(prev)
}

// --- the state file ------------------------------------------------------------------

func (w *Watcher) statePath() string {
	if w.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(w.cfg.StateDir, w.cfg.StateFile)
}

// loadState reads the saved context values, if any.
func (w *Watcher) loadState() {
	path := w.statePath()
	if path == "" {
		return
	}
	if info, err := os.Stat(w.cfg.StateDir); err != nil || !info.IsDir() {
		w.printf("[state] %s is not a directory: the context is kept in memory only", w.cfg.StateDir)
		w.cfg.StateDir = ""
		return
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var values map[string]any
	if err == nil {
		decoder := json.NewDecoder(bytes.NewReader(data))
		decoder.UseNumber()
		err = decoder.Decode(&values)
	}
	if err != nil {
		// Set the bad file aside for a person to look at; start from empty values.
		aside := path + ".unreadable"
		if renameErr := os.Rename(path, aside); renameErr != nil {
			aside = "(could not set it aside: " + renameErr.Error() + ")"
		}
		w.logs.logStateFault(StateNotRun, StateInitRun, "could not load "+path+"; kept as "+aside, err)
		w.printf("[state] could not load %s (starting empty; kept as %s): %v", path, aside, err)
		return
	}
	for k, v := range values {
		w.values[k] = fromJSON(v)
	}
	w.printf("[state] loaded %d values from %s", len(values), path)
}

// fromJSON turns json.Numbers into int64 (when integral) or float64.
func fromJSON(v any) any {
	switch t := v.(type) {
	case json.Number:
		if n, err := strconv.ParseInt(string(t), 10, 64); err == nil {
			return n
		}
		f, _ := t.Float64()
		return f
	case map[string]any:
		for k, e := range t {
			t[k] = fromJSON(e)
		}
	case []any:
		for i, e := range t {
			t[i] = fromJSON(e)
		}
	}
	return v
}

// saveState writes the context values (when changed, or always if force):
// a temporary file, fsync, then rename, so a crash never leaves half a file.
func (w *Watcher) saveState(force bool) {
	path := w.statePath()
	w.mu.Lock()
	if path == "" || (!w.dirty && !force) {
		w.mu.Unlock()
		return
	}
	data, err := json.MarshalIndent(w.values, "", "  ")
	w.dirty = false
	w.mu.Unlock()
	if err == nil {
		err = writeFileAtomic(path, append(data, '\n'))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.dirty = true // try again after the next run
		if problem := err.Error(); problem != w.saveProblem {
			w.saveProblem = problem
			w.logs.logStateFault(w.state, w.state, "could not save "+path, err)
			w.printf("[state] could not save %s: %v", path, err)
		}
		return
	}
	w.saveProblem = ""
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
