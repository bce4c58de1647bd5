package hershy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/hershy/hershy/clients/go/hershyv1"
)

// EventKind says what a Watch [Event] means.
type EventKind int

// The kinds of Watch events.
const (
	// EventSnapshot: a program as it was when a snapshot was taken.
	EventSnapshot EventKind = iota + 1
	// EventSynced: the snapshot is complete; Revision is where it was taken.
	EventSynced
	// EventCreated: a program was created.
	EventCreated
	// EventUpdated: a program changed.
	EventUpdated
	// EventDeleted: a program was deleted (its state is DELETED).
	EventDeleted
	// EventResync: throw away what you know about the programs; a fresh
	// snapshot follows (EventSnapshot…, then EventSynced). Sent when the Host
	// says the watcher fell behind, when the Host no longer remembers the
	// revision to resume from (Err says why), and when a snapshot was cut
	// short by a disconnect.
	EventResync
	// EventDisconnected: the stream broke (Err says why; io.EOF when the
	// Host ended it, e.g. on shutdown); the watcher reconnects after RetryIn
	// and resumes after the last revision it delivered. Nothing is lost.
	EventDisconnected
)

var eventKindNames = map[EventKind]string{
	EventSnapshot:     "SNAPSHOT",
	EventSynced:       "SYNCED",
	EventCreated:      "CREATED",
	EventUpdated:      "UPDATED",
	EventDeleted:      "DELETED",
	EventResync:       "RESYNC",
	EventDisconnected: "DISCONNECTED",
}

func (k EventKind) String() string {
	if name, ok := eventKindNames[k]; ok {
		return name
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// IsChange reports whether the kind is a change to a program (Created,
// Updated or Deleted), as opposed to a snapshot entry or a marker.
func (k EventKind) IsChange() bool {
	return k == EventCreated || k == EventUpdated || k == EventDeleted
}

// Event is one item of a [Watcher]'s stream.
type Event struct {
	Kind EventKind
	// Program is the program, for Snapshot and the changes.
	Program *Program
	// Revision is the Host-wide revision of the change (of the program's
	// last change, for Snapshot; of the snapshot, for Synced). The changes a
	// Watcher delivers have strictly increasing revisions.
	Revision int64
	// Cause is the event that caused the change, for the changes.
	Cause *ProgramEvent
	// Err is why, for Disconnected (and for a Resync the client decided on).
	Err error
	// RetryIn is how long until the next attempt, for Disconnected.
	RetryIn time.Duration
}

// CauseKind is the name of the cause's kind ("start_requested",
// "container_ready", ...), or "" when there is no cause.
func (e Event) CauseKind() string {
	if e.Cause == nil {
		return ""
	}
	oneof := e.Cause.ProtoReflect().Descriptor().Oneofs().ByName("kind")
	if field := e.Cause.ProtoReflect().WhichOneof(oneof); field != nil {
		return string(field.Name())
	}
	return ""
}

// Time is when the change happened: the cause's time, else the program's
// last update, else the zero time.
func (e Event) Time() time.Time {
	if e.Cause.GetTime() != nil {
		return e.Cause.GetTime().AsTime()
	}
	if e.Program.GetUpdateTime() != nil {
		return e.Program.GetUpdateTime().AsTime()
	}
	return time.Time{}
}

// WatchOptions configure [Client.Watch].
type WatchOptions struct {
	// Program: only this program (id or name), when set.
	Program string
	// ResumeRevision: start with the changes after this revision instead of a
	// snapshot (0: start with a snapshot). Too old a revision gives a Resync.
	ResumeRevision int64
	// MinBackoff and MaxBackoff bound the delay between reconnection
	// attempts, which doubles after each failure (defaults: 200 ms and 5 s).
	MinBackoff, MaxBackoff time.Duration
	// Buffer is the capacity of the events channel (default 64). A consumer
	// that falls far behind gets a Resync from the Host, never a gap.
	Buffer int
}

// Watcher is a Watch stream that survives disconnects and Host restarts.
// Read Events until it is closed, then Err says why it ended.
type Watcher struct {
	events   chan Event
	done     chan struct{}
	err      error
	revision atomic.Int64
}

// Events delivers the stream. It is closed when the context given to
// [Client.Watch] ends or on an error retrying cannot fix; then see Err.
func (w *Watcher) Events() <-chan Event { return w.events }

// Err is why the watcher stopped: the context's error, or an error retrying
// cannot fix (e.g. NOT_FOUND for a single program that does not exist,
// UNAUTHENTICATED). It blocks until the watcher has stopped.
func (w *Watcher) Err() error {
	<-w.done
	return w.err
}

// Revision is the revision of the last change (or snapshot) delivered: where
// the watcher resumes after a disconnect (0: it will take a snapshot).
func (w *Watcher) Revision() int64 { return w.revision.Load() }

// Watch streams every change of every program (or of opts.Program): a
// snapshot (Snapshot events, then Synced), then each change once, in order
// of revision. When the stream breaks (the network, a Host shutdown or
// restart) it sends Disconnected, reconnects with backoff (200 ms doubling
// to 5 s by default) and resumes after the last revision it delivered; the
// Host keeps its changes in its store, so a restart loses nothing. When
// resuming is impossible (the Host answers OUT_OF_RANGE) or the Host says
// the watcher fell behind, it sends Resync and starts over with a fresh
// snapshot.
//
// Cancel ctx to stop; the events channel is then closed.
func (c *Client) Watch(ctx context.Context, opts WatchOptions) *Watcher {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.Buffer <= 0 {
		opts.Buffer = 64
	}
	w := &Watcher{events: make(chan Event, opts.Buffer), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(w.events)
		w.err = w.run(ctx, c, opts)
	}()
	return w
}

// watchState is what a watcher remembers across streams.
type watchState struct {
	// last is the revision of the last change (or snapshot) delivered.
	last int64
	// resume: the next stream resumes after last (else it takes a snapshot).
	resume bool
	// dirty: the consumer holds state a new snapshot must replace (so a
	// Resync goes first).
	dirty bool
}

// errStopped: the context ended while delivering an event.
var errStopped = errors.New("watch stopped")

func (w *Watcher) run(ctx context.Context, c *Client, opts WatchOptions) error {
	st := watchState{last: opts.ResumeRevision, resume: opts.ResumeRevision > 0}
	w.revision.Store(st.last)
	delay := opts.MinBackoff
	for {
		began := time.Now()
		received, err := w.stream(ctx, c, opts.Program, &st)
		if ctx.Err() != nil || errors.Is(err, errStopped) {
			return ctx.Err()
		}
		if received || time.Since(began) >= opts.MaxBackoff {
			delay = opts.MinBackoff
		}
		switch code := Code(err); {
		case err == nil || errors.Is(err, io.EOF):
			err = io.EOF
		case code == codes.OutOfRange && st.resume:
			// The Host no longer remembers (or never had) the revision:
			// start over from a snapshot, at once.
			st.resume, st.last = false, 0
			if !w.emit(ctx, Event{Kind: EventResync, Err: err}) {
				return ctx.Err()
			}
			st.dirty = false
			continue
		case permanent(code):
			return err
		}
		if !w.emit(ctx, Event{Kind: EventDisconnected, Err: err, RetryIn: delay}) {
			return ctx.Err()
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		delay = min(delay*2, opts.MaxBackoff)
	}
}

// permanent: retrying the same request cannot succeed.
func permanent(code codes.Code) bool {
	switch code {
	case codes.InvalidArgument, codes.NotFound, codes.Unauthenticated,
		codes.PermissionDenied, codes.Unimplemented, codes.FailedPrecondition:
		return true
	}
	return false
}

// SnapshotBatch is how many programs a snapshot message carries at most, as
// the client asks for them (the Host's cap, MAX_WATCH_SNAPSHOT_BATCH): a
// snapshot of 10,000 programs is ten messages, not 10,000. The events are one
// Snapshot per program either way.
const SnapshotBatch = 1000

// stream runs one WatchPrograms call until it ends; received says whether
// any message arrived (the connection worked).
func (w *Watcher) stream(ctx context.Context, c *Client, program string, st *watchState) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &hershyv1.WatchProgramsRequest{SnapshotBatchSize: SnapshotBatch}
	if program != "" {
		req.Name = Name(program)
	}
	if st.resume {
		req.ResumeRevision = proto.Int64(st.last)
	}
	// Fail fast while the Host is down: the watcher's own loop retries, and
	// says so with each Disconnected event.
	stream, err := c.rpc.WatchPrograms(ctx, req, grpc.WaitForReady(false))
	if err != nil {
		return false, wrap(ctx, err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return received, io.EOF
			}
			return received, wrap(ctx, err)
		}
		if !received && !st.resume && st.dirty {
			// A fresh snapshot is coming to a consumer that knows something
			// (a snapshot cut short): have it start over.
			if !w.emit(ctx, Event{Kind: EventResync, Err: errors.New("reconnected without a resume point")}) {
				return true, errStopped
			}
			st.dirty = false
		}
		received = true
		event := Event{Program: msg.GetProgram(), Revision: msg.GetRevision(), Cause: msg.GetEvent()}
		switch msg.GetType() {
		case hershyv1.WatchProgramsResponse_TYPE_SNAPSHOT:
			event.Kind = EventSnapshot
			st.resume = false
			if batch := msg.GetSnapshotPrograms(); len(batch) > 0 {
				// A batch: one event per program, with the program's revision.
				for _, program := range batch {
					one := Event{Kind: EventSnapshot, Program: program, Revision: program.GetRevision()}
					if !w.emit(ctx, one) {
						return true, errStopped
					}
				}
				st.dirty = true
				continue
			}
		case hershyv1.WatchProgramsResponse_TYPE_SYNCED:
			event.Kind = EventSynced
			st.last, st.resume = msg.GetRevision(), true
			w.revision.Store(st.last)
		case hershyv1.WatchProgramsResponse_TYPE_RESYNC:
			event.Kind = EventResync
			st.resume = false
		case hershyv1.WatchProgramsResponse_TYPE_CREATED,
			hershyv1.WatchProgramsResponse_TYPE_UPDATED,
			hershyv1.WatchProgramsResponse_TYPE_DELETED:
			if st.resume && msg.GetRevision() <= st.last {
				continue // delivered already
			}
			event.Kind = changeKinds[msg.GetType()]
			if st.resume {
				st.last = msg.GetRevision()
				w.revision.Store(st.last)
			}
		default:
			continue // a type this client does not know: ignore it
		}
		if !w.emit(ctx, event) {
			return true, errStopped
		}
		st.dirty = event.Kind != EventResync
	}
}

var changeKinds = map[hershyv1.WatchProgramsResponse_Type]EventKind{
	hershyv1.WatchProgramsResponse_TYPE_CREATED: EventCreated,
	hershyv1.WatchProgramsResponse_TYPE_UPDATED: EventUpdated,
	hershyv1.WatchProgramsResponse_TYPE_DELETED: EventDeleted,
}

// emit delivers an event unless ctx ends first.
func (w *Watcher) emit(ctx context.Context, event Event) bool {
	select {
	case w.events <- event:
		return true
	case <-ctx.Done():
		return false
	}
}
