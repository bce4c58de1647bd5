// Command watcher-server is the bare minimum WatcherAPI program: a managed
// function that answers every message with an echo, recorded in the logs.
//
// POST /watcher/message {"content":"hello"} answers {"status":"message sent",
// "handled":true,"reply":"echo: hello"}, and GET /watcher/logs?type=effect
// shows "echo: hello". GET /watcher/varState shows "messages" (how many were
// received, kept in /state across restarts) and "lastMessage".
// Environment: STATE_DIR (/state), WATCHER_ADDR (:8080), WATCHER_ID.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hershy/hershy/examples/internal/watcherapi"
)

func main() {
	watcher := watcherapi.New(watcherapi.DefaultConfig("watcher-server"))
	watcher.Manage(func(msg *watcherapi.Message, ctx *watcherapi.Context) error {
		if msg == nil { // InitRun
			ctx.SetValue("messages", ctx.Int("messages"))
			ctx.Log("watcher-server ready")
			return nil
		}
		ctx.SetValue("messages", ctx.Int("messages")+1)
		ctx.SetValue("lastMessage", msg.Content)
		ctx.Log("echo: %s", msg.Content)
		ctx.Reply("echo: %s", msg.Content)
		return nil
	}, "Echo")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := watcher.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
