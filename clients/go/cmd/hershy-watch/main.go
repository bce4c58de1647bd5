// Command hershy-watch prints every state change of every program on a
// Hershy Host, one line each, and keeps going across disconnects and Host
// restarts (it resumes after the last revision it printed, or resyncs when
// the Host tells it to).
//
//	go run ./cmd/hershy-watch -target 127.0.0.1:9090 [-token T] [-program prog-…] [-resume REV]
//
// Each line on stdout is
//
//	TIME PROGRAM_ID STATE rev=REVISION KIND[/CAUSE]
//
// e.g. `2026-01-02T15:04:05.123Z prog-3f2a READY rev=42 UPDATED/container_ready`.
// KIND is SNAPSHOT (a program as it is when the watch starts or resyncs),
// CREATED, UPDATED or DELETED; CAUSE is the event that caused the change.
// Connection notes (synced, disconnected, resync) go to stderr. SIGINT or
// SIGTERM ends it with status 0; an error retrying cannot fix, with 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hershy/hershy/clients/go/hershy"
)

func main() {
	target := flag.String("target", hershy.DefaultTarget, "the Host's gRPC address")
	token := flag.String("token", os.Getenv("HERSHY_TOKEN"), "bearer token (default $HERSHY_TOKEN)")
	program := flag.String("program", "", "only this program (id or programs/{id})")
	resume := flag.Int64("resume", 0, "start after this revision instead of with a snapshot")
	insecure := flag.Bool("insecure", false, "plaintext even for a non-loopback target (the token travels in the clear)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, os.Stderr, *target, *token, *program, *resume, *insecure); err != nil {
		fmt.Fprintf(os.Stderr, "hershy-watch: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, notes io.Writer, target, token, program string, resume int64, insecure bool) error {
	var opts []hershy.Option
	if token != "" {
		opts = append(opts, hershy.WithToken(token))
	}
	if insecure {
		opts = append(opts, hershy.WithInsecure())
	}
	client, err := hershy.Dial(ctx, target, opts...)
	if err != nil {
		return err
	}
	defer client.Close()

	watcher := client.Watch(ctx, hershy.WatchOptions{Program: program, ResumeRevision: resume})
	for event := range watcher.Events() {
		switch event.Kind {
		case hershy.EventSynced:
			fmt.Fprintf(notes, "hershy-watch: synced at revision %d\n", event.Revision)
		case hershy.EventResync:
			why := "the Host asked"
			if event.Err != nil {
				why = event.Err.Error()
			}
			fmt.Fprintf(notes, "hershy-watch: resync (%s): a fresh snapshot follows\n", why)
		case hershy.EventDisconnected:
			why := "the Host ended the stream"
			if !errors.Is(event.Err, io.EOF) {
				why = event.Err.Error()
			}
			fmt.Fprintf(notes, "hershy-watch: disconnected (%s); resuming after revision %d in %s\n",
				why, watcher.Revision(), event.RetryIn)
		default:
			fmt.Fprintln(out, line(event))
		}
	}
	if err := watcher.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// line formats a program event: TIME PROGRAM_ID STATE rev=REVISION KIND[/CAUSE].
func line(event hershy.Event) string {
	kind := event.Kind.String()
	if cause := event.CauseKind(); cause != "" {
		kind += "/" + cause
	}
	when := "-"
	if t := event.Time(); !t.IsZero() {
		when = t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	}
	return fmt.Sprintf("%s %s %s rev=%d %s",
		when, event.Program.GetId(), hershy.StateName(event.Program.GetState()), event.Revision, kind)
}
