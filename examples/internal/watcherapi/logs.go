package watcherapi

import (
	"sync"
	"time"
)

// The log entries, in the shapes GET /watcher/logs returns. Field names follow
// Hersh's logger (exported Go names, no JSON tags there either), with errors
// as strings so that they survive JSON.

// ReduceLogEntry records one state transition of the watcher and the signal that caused it.
type ReduceLogEntry struct {
	LogID     uint64
	Timestamp time.Time
	Action    ReduceAction
}

// ReduceAction is what a reduce step did.
type ReduceAction struct {
	PrevState string
	NextState string
	Signal    string
}

// EffectLogEntry is one line the managed function logged (Context.Log).
type EffectLogEntry struct {
	LogID     uint64
	Timestamp time.Time
	Message   string
}

// EffectResult is the outcome of one run of the managed function.
type EffectResult struct {
	LogID     uint64
	Timestamp time.Time
	Trigger   string
	Success   bool
	Error     string `json:",omitempty"`
	Duration  string
}

// WatchErrorLogEntry is an error from a WatchCall poll or a WatchFlow source.
type WatchErrorLogEntry struct {
	LogID      uint64
	Timestamp  time.Time
	VarName    string
	ErrorPhase string
	Error      string
}

// ContextValueLogEntry is one change of a context value (Context.SetValue).
type ContextValueLogEntry struct {
	LogID     uint64
	Timestamp time.Time
	Key       string
	OldValue  any
	NewValue  any
	Operation string // "initialized" or "updated"
}

// StateFaultLogEntry is a fault in a state transition: a panic in the managed
// function, or state that could not be loaded or saved.
type StateFaultLogEntry struct {
	LogID     uint64
	Timestamp time.Time
	FromState string
	ToState   string
	Reason    string
	Error     string
}

// ring keeps the last max entries of one kind; ids keep counting.
type ring[T any] struct {
	max     int
	next    uint64
	entries []T
}

func (r *ring[T]) add(build func(id uint64) T) {
	r.next++
	r.entries = append(r.entries, build(r.next))
	if len(r.entries) > r.max {
		// Drop the oldest quarter at once: appends stay amortised O(1).
		drop := len(r.entries) - r.max + r.max/4
		r.entries = append(r.entries[:0], r.entries[drop:]...)
	}
}

// last returns a copy of the newest n entries (never nil: an empty list is []).
func (r *ring[T]) last(n int) []T {
	start := len(r.entries) - n
	if start < 0 {
		start = 0
	}
	return append([]T{}, r.entries[start:]...)
}

// logBook holds every log a watcher keeps.
type logBook struct {
	mu          sync.Mutex
	reduce      ring[ReduceLogEntry]
	effect      ring[EffectLogEntry]
	results     ring[EffectResult]
	watchErrors ring[WatchErrorLogEntry]
	context     ring[ContextValueLogEntry]
	stateFaults ring[StateFaultLogEntry]
}

func newLogBook(max int) *logBook {
	b := &logBook{}
	b.reduce.max, b.effect.max, b.results.max = max, max, max
	b.watchErrors.max, b.context.max, b.stateFaults.max = max, max, max
	return b
}

func (b *logBook) logReduce(prev, next State, signal string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reduce.add(func(id uint64) ReduceLogEntry {
		return ReduceLogEntry{id, time.Now().UTC(), ReduceAction{string(prev), string(next), signal}}
	})
}

func (b *logBook) logEffect(message string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.effect.add(func(id uint64) EffectLogEntry { return EffectLogEntry{id, time.Now().UTC(), message} })
}

func (b *logBook) logResult(trigger string, err error, took time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.results.add(func(id uint64) EffectResult {
		r := EffectResult{LogID: id, Timestamp: time.Now().UTC(), Trigger: trigger, Success: err == nil, Duration: took.String()}
		if err != nil {
			r.Error = err.Error()
		}
		return r
	})
}

func (b *logBook) logWatchError(varName, phase string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.watchErrors.add(func(id uint64) WatchErrorLogEntry {
		return WatchErrorLogEntry{id, time.Now().UTC(), varName, phase, err.Error()}
	})
}

func (b *logBook) logContext(key string, old, new any, operation string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.context.add(func(id uint64) ContextValueLogEntry {
		return ContextValueLogEntry{id, time.Now().UTC(), key, old, new, operation}
	})
}

func (b *logBook) logStateFault(from, to State, reason string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stateFaults.add(func(id uint64) StateFaultLogEntry {
		e := StateFaultLogEntry{LogID: id, Timestamp: time.Now().UTC(), FromState: string(from), ToState: string(to), Reason: reason}
		if err != nil {
			e.Error = err.Error()
		}
		return e
	})
}
