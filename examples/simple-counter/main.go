// Command simple-counter is a WatcherAPI counter: the count goes up by one
// every second (a WatchTick), can be changed with messages, and is kept in
// /state so that it survives restarts.
//
// Messages (POST /watcher/message {"content": "..."}):
//
//	inc       count + 1
//	add N     count + N (N an integer, may be negative)
//	reset     count = 0
//
// GET /watcher/varState shows "count" (the counter), "lastCommand" and "tick"
// (the ticker: {"time","tickCount"}). Environment: COUNTER_INTERVAL (a Go
// duration, default 1s), STATE_DIR (/state), WATCHER_ADDR (:8080), WATCHER_ID.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hershy/hershy/examples/internal/watcherapi"
)

func main() {
	interval := time.Second
	if v := os.Getenv("COUNTER_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fmt.Fprintf(os.Stderr, "COUNTER_INTERVAL=%q is not a positive duration\n", v)
			os.Exit(2)
		}
		interval = d
	}

	watcher := watcherapi.New(watcherapi.DefaultConfig("simple-counter"))
	watcher.Manage(func(msg *watcherapi.Message, ctx *watcherapi.Context) error {
		if ctx.Trigger().IsWatcherSig {
			// InitRun: show the count (restored from /state, or 0) from the start.
			ctx.SetValue("count", ctx.Int("count"))
			ctx.Log("simple-counter starting at count=%d, +1 every %v", ctx.Int("count"), interval)
		}

		ctx.WatchTick("tick", interval)
		if ctx.Triggered("tick") {
			ctx.SetValue("count", ctx.Int("count")+1)
		}

		if msg != nil {
			handle(msg.Content, ctx)
		}
		return nil
	}, "Counter").Cleanup(func(ctx *watcherapi.Context) {
		ctx.Log("stopping at count=%d", ctx.Int("count"))
	})

	// SIGTERM (docker stop) or SIGINT: Run stops cleanly, saves /state, returns.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := watcher.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// handle runs one command and replies with the new count.
func handle(content string, ctx *watcherapi.Context) {
	fields := strings.Fields(strings.ToLower(content))
	count := ctx.Int("count")
	switch {
	case len(fields) == 1 && fields[0] == "inc":
		count++
	case len(fields) == 1 && fields[0] == "reset":
		count = 0
	case len(fields) == 2 && fields[0] == "add":
		n, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			ctx.Log("rejected %q: %q is not an integer", content, fields[1])
			ctx.Reply("error: %q is not an integer; use add N", fields[1])
			return
		}
		count += n
	default:
		ctx.Log("rejected %q: unknown command", content)
		ctx.Reply("error: unknown command %q; use inc, add N or reset", content)
		return
	}
	ctx.SetValue("count", count)
	ctx.SetValue("lastCommand", content)
	ctx.Log("%s -> count=%d", content, count)
	ctx.Reply("count=%d", count)
}
