package hershy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hershy/hershy/clients/go/hershy"
	"github.com/hershy/hershy/clients/go/hershyv1"
)

const dockerfile = "FROM scratch\nCOPY app /app\n"

func dial(t *testing.T, addr string, opts ...hershy.Option) *hershy.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base := []hershy.Option{hershy.WithBlock()}
	if token, ok := adminTokens.Load(addr); ok {
		base = append(base, hershy.WithToken(token.(string)))
	}
	client, err := hershy.Dial(ctx, addr, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func testContext(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// userID is unique per test, so List filters see only the test's programs.
func userID(t *testing.T) string {
	return fmt.Sprintf("go-%d", time.Now().UnixNano())
}

// check(f())(t) is f's value; an error fails the test.
func check[T any](value T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return value
	}
}

func TestLifecycle(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)
	user := userID(t)

	files := map[string][]byte{"app/main.py": []byte("print('hi')\n")}
	program := check(client.Create(ctx, hershy.CreateRequest{
		UserID: user, Dockerfile: dockerfile, Files: files,
		Resources: &hershy.Resources{MemoryBytes: 256 << 20},
	}))(t)
	if program.GetState() != hershy.StateCreated || program.GetUserId() != user || program.GetName() != "programs/"+program.GetId() {
		t.Fatalf("created %v", program)
	}
	got := check(client.Get(ctx, program.GetId()))(t)
	if !proto.Equal(got, program) {
		t.Fatalf("Get = %v, want %v", got, program)
	}
	byName := check(client.Get(ctx, program.GetName()))(t)
	if byName.GetId() != program.GetId() {
		t.Fatalf("Get by name = %v", byName)
	}

	source := check(client.Source(ctx, program.GetId()))(t)
	if source.GetDockerfile() != dockerfile || string(source.GetSrcFiles()["app/main.py"]) != string(files["app/main.py"]) ||
		source.GetBuildId() != program.GetBuildId() {
		t.Fatalf("source %v", source)
	}

	check(client.Start(ctx, program.GetId()))(t)
	ready := check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)
	if ready.GetState() != hershy.StateReady || ready.GetRevision() <= program.GetRevision() {
		t.Fatalf("ready %v", ready)
	}

	check(client.Stop(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateStopped, 10*time.Second))(t)
	check(client.Restart(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)

	var lines []string
	for entry, err := range client.Logs(ctx, program.GetId(), hershy.LogOptions{Streams: []hershy.LogStream{hershy.LogStreamHost}}) {
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, entry.GetLine())
	}
	if len(lines) == 0 {
		t.Fatal("no Host log lines")
	}
	tail := 0
	for _, err := range client.Logs(ctx, program.GetId(), hershy.LogOptions{Tail: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		tail++
	}
	if tail != 1 {
		t.Fatalf("Tail 1 gave %d lines", tail)
	}

	deleting := check(client.Delete(ctx, program.GetId()))(t)
	if deleting.GetState() != hershy.StateDeleting && deleting.GetState() != hershy.StateDeleted {
		t.Fatalf("Delete returned %v", deleting.GetState())
	}
	for {
		_, err := client.Get(ctx, program.GetId())
		if hershy.IsNotFound(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestListAllPages(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)
	user := userID(t)
	var want []string
	for range 5 {
		program := check(client.Create(ctx, hershy.CreateRequest{UserID: user, Dockerfile: dockerfile}))(t)
		want = append(want, program.GetId())
	}
	programs := check(client.List(ctx, hershy.ListOptions{UserID: user, PageSize: 2}))(t)
	var got []string
	for _, program := range programs {
		got = append(got, program.GetId())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v (creation order)", got, want)
	}
	// The iterator stops fetching when the caller stops.
	n := 0
	for program, err := range client.Programs(ctx, hershy.ListOptions{UserID: user, PageSize: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		if program.GetId() != want[n] {
			t.Fatalf("Programs[%d] = %s, want %s", n, program.GetId(), want[n])
		}
		n++
		if n == 3 {
			break
		}
	}
	if all := check(client.List(ctx, hershy.ListOptions{}))(t); len(all) < len(want) {
		t.Fatalf("List without a filter gave %d programs", len(all))
	}
}

func TestTypedErrors(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)

	_, err := client.Create(ctx, hershy.CreateRequest{UserID: "Not A User!", Dockerfile: dockerfile})
	var herr *hershy.Error
	if !hershy.IsInvalidArgument(err) || !errors.As(err, &herr) {
		t.Fatalf("bad user id: %v", err)
	}
	if herr.Field != "user_id" || herr.Reason != "INVALID_ARGUMENT" || herr.Domain != hershy.ErrorDomain ||
		herr.Description == "" || herr.Code != codes.InvalidArgument {
		t.Fatalf("bad user id: %+v", herr)
	}
	if status.Code(err) != codes.InvalidArgument { // still a gRPC status
		t.Fatalf("status.Code = %v", status.Code(err))
	}

	_, err = client.Get(ctx, "prog-doesnotexist")
	if !hershy.IsNotFound(err) || hershy.IsInvalidArgument(err) || !errors.As(err, &herr) || herr.Reason != "PROGRAM_NOT_FOUND" {
		t.Fatalf("unknown program: %v", err)
	}

	program := check(client.Create(ctx, hershy.CreateRequest{UserID: userID(t), Dockerfile: dockerfile}))(t)
	_, err = client.Wait(ctx, program.GetId(), hershy.StateReady, 100*time.Millisecond)
	if !hershy.IsDeadlineExceeded(err) {
		t.Fatalf("Wait timeout: %v", err)
	}
	check(client.Start(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)
	_, err = client.Start(ctx, program.GetId())
	if !hershy.IsFailedPrecondition(err) || !errors.As(err, &herr) {
		t.Fatalf("Start on READY: %v", err)
	}
	if herr.State != "READY" || herr.ProgramState() != hershy.StateReady || herr.Reason != "WRONG_STATE" {
		t.Fatalf("Start on READY: %+v", herr)
	}

	// A resume revision ahead of the Host: OUT_OF_RANGE (through the raw client).
	stream, err := client.Raw().WatchPrograms(ctx, &hershyv1.WatchProgramsRequest{ResumeRevision: proto.Int64(1 << 50)})
	if err == nil {
		_, err = stream.Recv()
	}
	if err = hershy.AsError(err); !hershy.IsRevisionTooOld(err) || !errors.As(err, &herr) || herr.Metadata["oldest_revision"] == "" {
		t.Fatalf("resume ahead: %v", err)
	}

	// The caller's own cancellation is still context.Canceled.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err = client.Get(cancelled, program.GetId()); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	if hershy.IsUnauthenticated(err) || hershy.IsNotFound(nil) {
		t.Fatal("Is… must not match other codes or nil")
	}
}

// tokenServer answers GetProgram only with the right bearer token, like a
// Host that checks tokens would.
type tokenServer struct {
	hershyv1.UnimplementedProgramServiceServer
	want string
}

func (s tokenServer) GetProgram(ctx context.Context, req *hershyv1.GetProgramRequest) (*hershyv1.Program, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+s.want {
		return nil, status.Errorf(codes.Unauthenticated, "bad token %q", got)
	}
	return &hershyv1.Program{Name: req.GetName()}, nil
}

func TestTokenIsSentAsABearerHeader(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	hershyv1.RegisterProgramServiceServer(server, tokenServer{want: "s3cret"})
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	ctx := testContext(t, 10*time.Second)

	// Plaintext on loopback, with the token.
	program := check(dial(t, listener.Addr().String(), hershy.WithToken("s3cret")).Get(ctx, "prog-1"))(t)
	if program.GetName() != "programs/prog-1" {
		t.Fatalf("Get = %v", program)
	}
	_, err = dial(t, listener.Addr().String(), hershy.WithToken("wrong")).Get(ctx, "prog-1")
	if !hershy.IsUnauthenticated(err) {
		t.Fatalf("wrong token: %v", err)
	}
	_, err = dial(t, listener.Addr().String()).Get(ctx, "prog-1")
	if !hershy.IsUnauthenticated(err) {
		t.Fatalf("no token: %v", err)
	}
	// An error without ErrorInfo is still an *Error, with the code's name as its reason.
	var herr *hershy.Error
	if !errors.As(err, &herr) || herr.Reason != "" || herr.Message == "" {
		t.Fatalf("no token: %+v", herr)
	}
}

func TestLoopbackTargets(t *testing.T) {
	for target, want := range map[string]bool{
		"127.0.0.1:9090": true, "localhost:9090": true, "[::1]:9090": true, "dns:///localhost:9090": true,
		"unix:///run/hershy.sock": true, "10.0.0.1:9090": false, "hershy.example.com:443": false,
	} {
		if got := hershy.IsLoopback(target); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", target, got, want)
		}
	}
}

// next reads the next event, failing the test after timeout.
func next(t *testing.T, w *hershy.Watcher, timeout time.Duration) hershy.Event {
	t.Helper()
	select {
	case event, ok := <-w.Events():
		if !ok {
			t.Fatalf("the watcher stopped: %v", w.Err())
		}
		return event
	case <-time.After(timeout):
		t.Fatalf("no watch event within %s", timeout)
	}
	panic("unreachable")
}

// untilSynced reads the snapshot and returns the programs in it.
func untilSynced(t *testing.T, w *hershy.Watcher) (map[string]*hershy.Program, int64) {
	t.Helper()
	programs := map[string]*hershy.Program{}
	for {
		event := next(t, w, 10*time.Second)
		switch event.Kind {
		case hershy.EventSnapshot:
			programs[event.Program.GetId()] = event.Program
		case hershy.EventSynced:
			return programs, event.Revision
		case hershy.EventResync:
			clear(programs)
		default:
			t.Fatalf("unexpected %v before SYNCED", event.Kind)
		}
	}
}

func TestWatchSeesTheLifecycle(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)
	existing := check(client.Create(ctx, hershy.CreateRequest{UserID: userID(t), Dockerfile: dockerfile}))(t)

	w := client.Watch(ctx, hershy.WatchOptions{})
	snapshot, synced := untilSynced(t, w)
	if _, ok := snapshot[existing.GetId()]; !ok || synced < existing.GetRevision() {
		t.Fatalf("snapshot at %d misses %s (revision %d)", synced, existing.GetId(), existing.GetRevision())
	}

	program := check(client.Create(ctx, hershy.CreateRequest{UserID: userID(t), Dockerfile: dockerfile}))(t)
	check(client.Start(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)
	check(client.Stop(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateStopped, 10*time.Second))(t)
	check(client.Delete(ctx, program.GetId()))(t)

	var states []string
	var kinds []hershy.EventKind
	last := synced
	for {
		event := next(t, w, 10*time.Second)
		if !event.Kind.IsChange() {
			t.Fatalf("unexpected %v", event.Kind)
		}
		if event.Revision <= last {
			t.Fatalf("revision %d after %d", event.Revision, last)
		}
		last = event.Revision
		if event.Program.GetId() != program.GetId() {
			continue // another test's program
		}
		if event.Cause == nil || event.CauseKind() == "" || event.Time().IsZero() {
			t.Fatalf("change without a cause: %+v", event)
		}
		states = append(states, hershy.StateName(event.Program.GetState()))
		kinds = append(kinds, event.Kind)
		if event.Kind == hershy.EventDeleted {
			break
		}
	}
	if w.Revision() != last {
		t.Fatalf("Revision() = %d, want %d", w.Revision(), last)
	}
	want := []string{"CREATED", "BUILDING", "STARTING", "READY", "STOPPING", "STOPPED", "DELETING", "DELETED"}
	if !isSubsequence(want, states) {
		t.Fatalf("states %v, want %v in order", states, want)
	}
	if kinds[0] != hershy.EventCreated || kinds[len(kinds)-1] != hershy.EventDeleted {
		t.Fatalf("kinds %v", kinds)
	}
}

func isSubsequence(want, got []string) bool {
	i := 0
	for _, s := range got {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestWatchResyncsWhenTheRevisionIsUnknown(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 20*time.Second)
	program := check(client.Create(ctx, hershy.CreateRequest{UserID: userID(t), Dockerfile: dockerfile}))(t)

	w := client.Watch(ctx, hershy.WatchOptions{Program: program.GetId(), ResumeRevision: 1 << 50})
	event := next(t, w, 10*time.Second)
	if event.Kind != hershy.EventResync || !hershy.IsRevisionTooOld(event.Err) {
		t.Fatalf("first event %+v, want a Resync for OUT_OF_RANGE", event)
	}
	snapshot, _ := untilSynced(t, w)
	if len(snapshot) != 1 || snapshot[program.GetId()] == nil {
		t.Fatalf("snapshot of one program: %v", snapshot)
	}
}

func TestWatchStopsOnPermanentErrors(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	w := client.Watch(testContext(t, 10*time.Second), hershy.WatchOptions{Program: "prog-doesnotexist"})
	for range w.Events() {
		t.Fatal("an event for a program that does not exist")
	}
	if !hershy.IsNotFound(w.Err()) {
		t.Fatalf("Err() = %v, want NOT_FOUND", w.Err())
	}
}

func TestWatchStopsWithItsContext(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx, cancel := context.WithCancel(context.Background())
	w := client.Watch(ctx, hershy.WatchOptions{})
	untilSynced(t, w)
	cancel()
	for range w.Events() {
	}
	if !errors.Is(w.Err(), context.Canceled) {
		t.Fatalf("Err() = %v", w.Err())
	}
}

// TestWatchSurvivesAHostRestart: the watcher resumes from its last revision
// after the Host restarts on the same data dir and port; every change
// arrives once, in strictly increasing revisions, with no resync.
func TestWatchSurvivesAHostRestart(t *testing.T) {
	h := ownHost(t)
	// Calls made while the Host comes back wait for it instead of failing.
	client := dial(t, h.grpcAddr, hershy.WithWaitForReady())
	ctx := testContext(t, 45*time.Second)

	program := check(client.Create(ctx, hershy.CreateRequest{UserID: "alice", Dockerfile: dockerfile}))(t)
	check(client.Start(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)

	w := client.Watch(ctx, hershy.WatchOptions{})
	snapshot, synced := untilSynced(t, w)
	if snapshot[program.GetId()].GetState() != hershy.StateReady {
		t.Fatalf("snapshot %v", snapshot)
	}

	seen := map[int64]bool{}
	last := synced
	record := func(event hershy.Event) {
		t.Helper()
		if event.Revision <= last || seen[event.Revision] {
			t.Fatalf("revision %d after %d (duplicate: %v)", event.Revision, last, seen[event.Revision])
		}
		seen[event.Revision] = true
		last = event.Revision
		t.Logf("%s %s rev=%d %s/%s", time.Now().Format("15:04:05.000"), hershy.StateName(event.Program.GetState()),
			event.Revision, event.Kind, event.CauseKind())
	}

	t.Logf("%s stopping the Host", time.Now().Format("15:04:05.000"))
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s stopped", time.Now().Format("15:04:05.000"))
	// The stream ends with the Host; the watcher says so and retries.
	for event := next(t, w, 10*time.Second); event.Kind != hershy.EventDisconnected; event = next(t, w, 10*time.Second) {
		if !event.Kind.IsChange() {
			t.Fatalf("unexpected %v before the disconnect", event.Kind)
		}
		record(event)
	}
	restarted := time.Now()
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Host back after %s", time.Since(restarted).Round(time.Millisecond))

	// Programs survive the restart; a change made now reaches the watcher.
	stopped := check(client.Stop(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateStopped, 10*time.Second))(t)
	if stopped.GetRevision() <= synced {
		t.Fatalf("revisions restarted: %d after %d", stopped.GetRevision(), synced)
	}
	for {
		event := next(t, w, 15*time.Second)
		switch {
		case event.Kind == hershy.EventDisconnected:
			t.Logf("%s disconnected: %v; retry in %s", time.Now().Format("15:04:05.000"), event.Err, event.RetryIn)
			continue // attempts while the Host was down
		case !event.Kind.IsChange():
			t.Fatalf("unexpected %v after the restart (want a resume, not a resync): %+v", event.Kind, event)
		}
		record(event)
		if event.Program.GetId() == program.GetId() && event.Program.GetState() == hershy.StateStopped {
			break
		}
	}
	// This Host has only this program: its revisions have no gaps.
	if int64(len(seen)) != last-synced {
		t.Fatalf("%d changes for revisions %d..%d: some were lost", len(seen), synced+1, last)
	}
	t.Logf("%d changes across the restart, revisions %d..%d", len(seen), synced+1, last)
}

// A snapshot comes in batches (the client asks for them) and is delivered one
// Snapshot event per program, each with its revision, exactly what the raw
// stream without batches says.
func TestWatchSnapshotInBatchesIsOneEventPerProgram(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 60*time.Second)
	user := userID(t)
	for range 25 {
		check(client.Create(ctx, hershy.CreateRequest{UserID: user, Dockerfile: dockerfile}))(t)
	}
	raw := func(batch int32) (map[string]*hershyv1.Program, int, int64) {
		stream := check(client.Raw().WatchPrograms(ctx, &hershyv1.WatchProgramsRequest{SnapshotBatchSize: batch}))(t)
		programs := map[string]*hershyv1.Program{}
		messages := 0
		for {
			msg := check(stream.Recv())(t)
			switch msg.GetType() {
			case hershyv1.WatchProgramsResponse_TYPE_SYNCED:
				return programs, messages, msg.GetRevision()
			case hershyv1.WatchProgramsResponse_TYPE_SNAPSHOT:
				messages++
				if batch == 0 {
					if len(msg.GetSnapshotPrograms()) != 0 || msg.GetRevision() != msg.GetProgram().GetRevision() {
						t.Fatalf("an unbatched snapshot message as it never was: %v", msg)
					}
					programs[msg.GetProgram().GetId()] = msg.GetProgram()
					continue
				}
				if msg.GetProgram() != nil || len(msg.GetSnapshotPrograms()) > int(batch) {
					t.Fatalf("a batch of %d with program %v", len(msg.GetSnapshotPrograms()), msg.GetProgram())
				}
				for _, p := range msg.GetSnapshotPrograms() {
					programs[p.GetId()] = p
				}
			default:
				t.Fatalf("unexpected %v before SYNCED", msg.GetType())
			}
		}
	}
	plain, plainMessages, plainRevision := raw(0)
	batched, batchMessages, batchRevision := raw(7)
	if len(plain) != plainMessages || batchMessages != (len(plain)+6)/7 {
		t.Fatalf("%d programs in %d messages, batched in %d", len(plain), plainMessages, batchMessages)
	}
	if len(batched) != len(plain) || batchRevision != plainRevision {
		t.Fatalf("batched: %d programs at %d; unbatched: %d at %d", len(batched), batchRevision, len(plain), plainRevision)
	}
	for id, p := range plain {
		if !proto.Equal(p, batched[id]) {
			t.Fatalf("%s differs: %v vs %v", id, p, batched[id])
		}
	}

	w := client.Watch(ctx, hershy.WatchOptions{})
	events := map[string]hershy.Event{}
	for {
		event := next(t, w, 10*time.Second)
		if event.Kind == hershy.EventSynced {
			if event.Revision < plainRevision {
				t.Fatalf("synced at %d, before %d", event.Revision, plainRevision)
			}
			break
		}
		if event.Kind != hershy.EventSnapshot || event.Program == nil {
			t.Fatalf("unexpected %+v in the snapshot", event)
		}
		events[event.Program.GetId()] = event
	}
	for id, p := range plain {
		event, ok := events[id]
		if !ok || event.Revision != p.GetRevision() || !proto.Equal(event.Program, p) {
			t.Fatalf("%s: event %+v, want %v", id, event, p)
		}
	}
}
