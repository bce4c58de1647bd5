// Package hershy is a thin Go client for the Hershy Host's gRPC API
// (hershy.v1.ProgramService): dial with an optional bearer token, call the
// service with Go-friendly signatures, get typed errors, and watch every
// program's state changes with a stream that survives disconnects and Host
// restarts (see [Client.Watch]).
//
// The generated code is in package
// github.com/hershy/hershy/clients/go/hershyv1; the types below that name a
// message (Program, State, ...) are aliases of the generated ones, and
// [Client.Raw] gives the generated client for anything this package does not
// wrap.
//
//	client, err := hershy.Dial(ctx, "127.0.0.1:9090", hershy.WithToken(token))
//	if err != nil { ... }
//	defer client.Close()
//	program, err := client.Create(ctx, hershy.CreateRequest{UserID: "alice", Dockerfile: "FROM scratch\n"})
//	if hershy.IsInvalidArgument(err) { ... }
//	_, err = client.Start(ctx, program.Id)
//	ready, err := client.Wait(ctx, program.Id, hershy.StateReady, time.Minute)
package hershy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/hershy/hershy/clients/go/hershyv1"
)

// Aliases of the generated types, so callers rarely need to import hershyv1.
type (
	// Program is a user's long-running container and its lifecycle.
	Program = hershyv1.Program
	// State is a program's lifecycle state.
	State = hershyv1.State
	// Resources are the limits of a program's container (zero: the Host's default).
	Resources = hershyv1.Resources
	// ProgramEvent is what happened to a program: the cause of a change.
	ProgramEvent = hershyv1.ProgramEvent
	// ProgramSource is the Dockerfile and files a program was created from.
	ProgramSource = hershyv1.ProgramSource
	// LogEntry is one line of a program's logs.
	LogEntry = hershyv1.LogEntry
	// LogStream says where a log line came from.
	LogStream = hershyv1.LogStream
)

// The lifecycle states (see the README's lifecycle diagram).
const (
	StateCreated  = hershyv1.State_STATE_CREATED
	StateBuilding = hershyv1.State_STATE_BUILDING
	StateStarting = hershyv1.State_STATE_STARTING
	StateReady    = hershyv1.State_STATE_READY
	StateStopping = hershyv1.State_STATE_STOPPING
	StateStopped  = hershyv1.State_STATE_STOPPED
	StateBackoff  = hershyv1.State_STATE_BACKOFF
	StateError    = hershyv1.State_STATE_ERROR
	StateDeleting = hershyv1.State_STATE_DELETING
	StateDeleted  = hershyv1.State_STATE_DELETED
)

// The log streams.
const (
	LogStreamBuild  = hershyv1.LogStream_LOG_STREAM_BUILD
	LogStreamStdout = hershyv1.LogStream_LOG_STREAM_STDOUT
	LogStreamStderr = hershyv1.LogStream_LOG_STREAM_STDERR
	LogStreamHost   = hershyv1.LogStream_LOG_STREAM_HOST
)

// StateName is a state's short name, as the Host's errors spell it: "READY".
func StateName(state State) string {
	return strings.TrimPrefix(state.String(), "STATE_")
}

// MaxMessageBytes is the largest message the client sends or accepts; it
// matches the Host (sources can be tens of MiB; gRPC's default is 4 MiB).
const MaxMessageBytes = 64 << 20

// DefaultTarget is where `hershy serve` listens by default.
const DefaultTarget = "127.0.0.1:9090"

// Client calls a Hershy Host. It is safe for concurrent use; Close it when done.
type Client struct {
	conn *grpc.ClientConn
	rpc  hershyv1.ProgramServiceClient
}

type options struct {
	token     string
	insecure  bool
	creds     credentials.TransportCredentials
	block     bool
	wait      bool
	dialOpts  []grpc.DialOption
	userAgent string
}

// Option configures [Dial].
type Option func(*options)

// WithToken sends `authorization: Bearer <token>` with every call.
//
// The token is sent over whatever transport the connection uses. On a
// loopback target (127.0.0.1, ::1, localhost, a unix socket), where the Host
// listens by default, that is plaintext: the bytes never leave the machine.
// For any other target the connection uses TLS unless [WithInsecure] is
// given, in which case the token travels in the clear: only do that over a
// network you trust (or a tunnel).
func WithToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithInsecure uses plaintext (no TLS). It is the default for loopback
// targets; other targets use TLS with the system's roots unless this or
// [WithTransportCredentials] is given.
func WithInsecure() Option {
	return func(o *options) { o.insecure = true }
}

// WithTransportCredentials uses these transport credentials (e.g. TLS with
// your own roots) instead of the default.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = creds }
}

// WithBlock makes [Dial] connect before it returns, failing when the
// context ends first. Without it Dial returns at once and connects on the
// first call.
func WithBlock() Option {
	return func(o *options) { o.block = true }
}

// WithWaitForReady makes calls wait for the Host to be reachable (until
// their context ends) instead of failing at once with UNAVAILABLE while it
// is down or restarting. Give such calls a deadline. [Client.Watch] is not
// affected: it retries on its own, reporting each failed attempt.
func WithWaitForReady() Option {
	return func(o *options) { o.wait = true }
}

// WithDialOptions passes extra options to grpc.NewClient (they come after,
// and so override, the client's own: e.g. keepalive parameters).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// bearerToken is per-RPC credentials carrying the token.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

// IsLoopback reports whether a gRPC target names this machine: a loopback
// address, localhost, or a unix socket.
func IsLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	for _, scheme := range []string{"dns:///", "passthrough:///", "dns:", "passthrough:"} {
		if rest, ok := strings.CutPrefix(target, scheme); ok {
			target = rest
			break
		}
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = strings.Trim(target, "[]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Dial creates a client for the Host at target ("127.0.0.1:9090", or any
// gRPC target). The context matters only with [WithBlock].
//
// Transport: plaintext for loopback targets or with [WithInsecure]; the
// credentials of [WithTransportCredentials] when given; otherwise TLS with
// the system's roots. The channel reconnects with a backoff of 200 ms
// doubling to 5 s, so a restarted Host is found again quickly.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	creds := o.creds
	plaintext := false
	if creds == nil {
		if o.insecure || IsLoopback(target) {
			creds = insecure.NewCredentials()
			plaintext = true
		} else {
			creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
		}
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageBytes),
			grpc.MaxCallSendMsgSize(MaxMessageBytes),
			grpc.WaitForReady(o.wait),
		),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  200 * time.Millisecond,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithUserAgent("hershy-go"),
	}
	if o.token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearerToken{
			token:      o.token,
			requireTLS: !plaintext && o.creds == nil,
		}))
	}
	dialOpts = append(dialOpts, o.dialOpts...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("hershy: dial %s: %w", target, err)
	}
	if o.block {
		conn.Connect()
		for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
			if !conn.WaitForStateChange(ctx, state) {
				_ = conn.Close()
				return nil, fmt.Errorf("hershy: connect to %s: %w (last state %s)", target, ctx.Err(), state)
			}
		}
	}
	return NewClient(conn), nil
}

// NewClient wraps a connection you made yourself. Closing the client closes it.
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{conn: conn, rpc: hershyv1.NewProgramServiceClient(conn)}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection (e.g. for the health service).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Raw is the generated client, for what this package does not wrap. Its
// errors are plain gRPC statuses: pass them through [AsError] for an *Error.
func (c *Client) Raw() hershyv1.ProgramServiceClient { return c.rpc }

// Name is a program's resource name: "programs/{id}". Every method that
// takes a program accepts its id ("prog-…"), its alias ("bot": the caller's own
// program of that name) or a full name ("programs/…", "users/{user}/programs/{alias}").
func Name(idOrName string) string {
	if strings.HasPrefix(idOrName, "programs/") || strings.HasPrefix(idOrName, "users/") {
		return idOrName
	}
	return "programs/" + idOrName
}

// CreateRequest describes a new program.
type CreateRequest struct {
	// UserID owns the program: 1-63 of [a-z0-9_-], starting with a letter or digit.
	UserID string
	// Dockerfile is the Dockerfile's content. Required.
	Dockerfile string
	// Files is the build context: relative, /-separated path to content.
	Files map[string][]byte
	// Resources are the container's limits; nil or zero fields: the Host's defaults.
	Resources *Resources
	// Alias names the program, unique among the user's: 1-63 of [a-z0-9-],
	// starting with a letter, never "prog-…". Optional.
	Alias string
	// Env holds environment variables ([A-Z_][A-Z0-9_]*, never HERSHY_…).
	Env map[string]string
	// Readiness says how the Host tells the program is initialised and alive;
	// nil: Hersh's (GET /watcher/status, `state` Ready or Running after InitRun).
	Readiness *hershyv1.ReadinessCheck
	// RestartPolicy says when it is restarted after it ended by itself; nil: always.
	RestartPolicy *hershyv1.RestartPolicy
	// Stop says how it is asked to stop; nil: SIGTERM and the Host's grace.
	Stop *hershyv1.StopSettings
}

// Create registers a program; it starts in CREATED.
func (c *Client) Create(ctx context.Context, req CreateRequest) (*Program, error) {
	program, err := c.rpc.CreateProgram(ctx, &hershyv1.CreateProgramRequest{
		UserId:        req.UserID,
		Dockerfile:    req.Dockerfile,
		SrcFiles:      req.Files,
		Resources:     req.Resources,
		Alias:         req.Alias,
		Env:           req.Env,
		Readiness:     req.Readiness,
		RestartPolicy: req.RestartPolicy,
		Stop:          req.Stop,
	})
	return program, wrap(ctx, err)
}

// Get returns one program.
func (c *Client) Get(ctx context.Context, id string) (*Program, error) {
	program, err := c.rpc.GetProgram(ctx, &hershyv1.GetProgramRequest{Name: Name(id)})
	return program, wrap(ctx, err)
}

// ListOptions narrow [Client.List] and [Client.Programs].
type ListOptions struct {
	// UserID: only this user's programs, when set.
	UserID string
	// PageSize is how many programs each call fetches (0: the Host's default, 100).
	PageSize int
}

// Programs iterates over every program (oldest first), fetching a page at a
// time. An error ends the iteration, yielded with a nil program.
func (c *Client) Programs(ctx context.Context, opts ListOptions) iter.Seq2[*Program, error] {
	return func(yield func(*Program, error) bool) {
		token := ""
		for {
			page, err := c.rpc.ListPrograms(ctx, &hershyv1.ListProgramsRequest{
				PageSize:  int32(min(opts.PageSize, 1000)),
				PageToken: token,
				UserId:    opts.UserID,
			})
			if err != nil {
				yield(nil, wrap(ctx, err))
				return
			}
			for _, program := range page.GetPrograms() {
				if !yield(program, nil) {
					return
				}
			}
			token = page.GetNextPageToken()
			if token == "" {
				return
			}
		}
	}
}

// List returns every program (all pages), oldest first.
func (c *Client) List(ctx context.Context, opts ListOptions) ([]*Program, error) {
	var programs []*Program
	for program, err := range c.Programs(ctx, opts) {
		if err != nil {
			return nil, err
		}
		programs = append(programs, program)
	}
	return programs, nil
}

// Start builds (or reuses) the image and starts the program; allowed from
// CREATED, STOPPED and ERROR.
func (c *Client) Start(ctx context.Context, id string) (*Program, error) {
	program, err := c.rpc.StartProgram(ctx, &hershyv1.StartProgramRequest{Name: Name(id)})
	return program, wrap(ctx, err)
}

// Stop stops the program; it ends in STOPPED.
func (c *Client) Stop(ctx context.Context, id string) (*Program, error) {
	program, err := c.rpc.StopProgram(ctx, &hershyv1.StopProgramRequest{Name: Name(id)})
	return program, wrap(ctx, err)
}

// Restart stops the program if it runs, then starts it again.
func (c *Client) Restart(ctx context.Context, id string) (*Program, error) {
	program, err := c.rpc.RestartProgram(ctx, &hershyv1.RestartProgramRequest{Name: Name(id)})
	return program, wrap(ctx, err)
}

// Delete stops and removes everything the program owns. It returns the
// program in DELETING; it is gone once DELETED.
func (c *Client) Delete(ctx context.Context, id string) (*Program, error) {
	program, err := c.rpc.DeleteProgram(ctx, &hershyv1.DeleteProgramRequest{Name: Name(id)})
	return program, wrap(ctx, err)
}

// Wait blocks until the program is in state, for at most timeout (0: the
// Host's default, 60 s; at most 1 h). A timeout fails with a DEADLINE_EXCEEDED
// *Error ([IsDeadlineExceeded]); a program that fails or is deleted on the
// way fails early (FAILED_PRECONDITION naming ERROR, or NOT_FOUND).
func (c *Client) Wait(ctx context.Context, id string, state State, timeout time.Duration) (*Program, error) {
	req := &hershyv1.WaitProgramRequest{Name: Name(id), State: state}
	if timeout > 0 {
		req.Timeout = durationpb.New(timeout)
	}
	program, err := c.rpc.WaitProgram(ctx, req)
	return program, wrap(ctx, err)
}

// Source returns the Dockerfile and files the program was created from.
func (c *Client) Source(ctx context.Context, id string) (*ProgramSource, error) {
	source, err := c.rpc.GetProgramSource(ctx, &hershyv1.GetProgramSourceRequest{Name: Name(id)})
	return source, wrap(ctx, err)
}

// DeployRequest describes a new revision of a program: new source and, if
// set, new limits.
type DeployRequest struct {
	// Dockerfile is the new Dockerfile's content. Required.
	Dockerfile string
	// Files is the new build context, as in [CreateRequest].
	Files map[string][]byte
	// Resources: nil keeps the program's limits; zero fields take the Host's defaults.
	Resources *Resources
}

// Deploy rolls out a new revision in place (same id, same /state). On a READY
// program the new image builds while the current revision keeps running; once
// built the Host switches, and if the new revision fails to build or to become
// READY the previous one runs again by itself (Program.Rollout says why).
func (c *Client) Deploy(ctx context.Context, id string, req DeployRequest) (*Program, error) {
	program, err := c.rpc.DeployProgram(ctx, &hershyv1.DeployProgramRequest{
		Name:       Name(id),
		Dockerfile: req.Dockerfile,
		SrcFiles:   req.Files,
		Resources:  req.Resources,
	})
	return program, wrap(ctx, err)
}

// UpdateResources changes the named resource fields (paths such as
// "resources.memory_bytes", or "resources" for all) as a new revision.
func (c *Client) UpdateResources(ctx context.Context, id string, resources *Resources, paths ...string) (*Program, error) {
	program, err := c.rpc.UpdateProgram(ctx, &hershyv1.UpdateProgramRequest{
		Program:    &hershyv1.Program{Name: Name(id), Resources: resources},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
	})
	return program, wrap(ctx, err)
}

// UpdateRequest is what [Client.Update] changes: the fields set (nil: left
// alone), or, with Paths, only those field paths ("restart_policy.mode",
// "stop.grace", "readiness", ...; a path whose field is unset takes its
// default).
type UpdateRequest struct {
	Resources     *Resources
	Readiness     *hershyv1.ReadinessCheck
	RestartPolicy *hershyv1.RestartPolicy
	Stop          *hershyv1.StopSettings
	Paths         []string
}

// Update changes the program's resources, readiness check, restart policy or
// stop settings as a new revision of the same source, rolled out like
// [Client.Deploy] (reverted if it never becomes READY). With no Paths the
// fields set are changed (AIP-134).
func (c *Client) Update(ctx context.Context, id string, req UpdateRequest) (*Program, error) {
	program, err := c.rpc.UpdateProgram(ctx, &hershyv1.UpdateProgramRequest{
		Program: &hershyv1.Program{
			Name:          Name(id),
			Resources:     req.Resources,
			Readiness:     req.Readiness,
			RestartPolicy: req.RestartPolicy,
			Stop:          req.Stop,
		},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: req.Paths},
	})
	return program, wrap(ctx, err)
}

// Revisions returns the program's revisions, newest first.
func (c *Client) Revisions(ctx context.Context, id string) ([]*hershyv1.ProgramRevision, error) {
	answer, err := c.rpc.ListProgramRevisions(ctx, &hershyv1.ListProgramRevisionsRequest{Name: Name(id)})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	return answer.GetRevisions(), nil
}

// Rollback rolls out a kept revision again as a new revision (0: the one
// before the current), with the same revert rules as [Client.Deploy].
func (c *Client) Rollback(ctx context.Context, id string, revision int64) (*Program, error) {
	program, err := c.rpc.RollbackProgram(ctx, &hershyv1.RollbackProgramRequest{
		Name: Name(id), RevisionNumber: revision,
	})
	return program, wrap(ctx, err)
}

// LogOptions select the lines [Client.Logs] returns.
type LogOptions struct {
	// Tail: > 0, only the last Tail lines; 0, every line; < 0, no past lines
	// (with Follow: only lines written from now on).
	Tail int
	// Follow keeps the stream open and yields new lines as they come, until
	// the context ends or the iteration stops.
	Follow bool
	// Streams: only these; empty, all.
	Streams []LogStream
}

// Logs iterates over the program's log lines: its builds, its containers'
// stdout and stderr, and the Host's notes. An error (NOT_FOUND for an
// unknown program) ends the iteration, yielded with a nil entry; so does
// the Host shutting down while following. Stopping the iteration ends the
// call.
func (c *Client) Logs(ctx context.Context, id string, opts LogOptions) iter.Seq2[*LogEntry, error] {
	return func(yield func(*LogEntry, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		req := &hershyv1.ReadProgramLogsRequest{Name: Name(id), Follow: opts.Follow, Streams: opts.Streams}
		switch {
		case opts.Tail > 0:
			req.Tail = proto.Int32(int32(min(opts.Tail, 1<<31-1)))
		case opts.Tail < 0:
			req.Tail = proto.Int32(0)
		}
		stream, err := c.rpc.ReadProgramLogs(ctx, req)
		if err != nil {
			yield(nil, wrap(ctx, err))
			return
		}
		for {
			entry, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, wrap(ctx, err))
				return
			}
			if !yield(entry, nil) {
				return
			}
		}
	}
}
