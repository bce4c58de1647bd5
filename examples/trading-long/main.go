// Command trading-long is a long-only trading simulator on the WatcherAPI. It
// trades on a simulated price feed (a seeded random walk, no network; a
// WatchFlow), buys on dips and takes profit, keeps its account in /state, and
// takes commands through POST /watcher/message:
//
//	buy [qty]    buy now at the last price (qty default TRADE_QTY, 1)
//	sell [qty]   sell now at the last price (qty default: the whole position)
//	pause        stop automatic trading (buy and sell still work)
//	resume       start automatic trading again
//	status       reply (and log) a summary
//
// GET /watcher/varState shows "position", "cash", "trades" (how many trades
// ever), "lastPrice", "avgEntry", "realizedPnl", "unrealizedPnl", "equity",
// "paused", "peak", "feedStep", "lastTrade" and "price" (the feed's latest
// tick: {"step","price","time"}). Every trade is also an effect log line
// ("TRADE #n ...") and a line of /state/trades.jsonl.
//
// Environment: PRICE_SEED (42), PRICE_START (100), PRICE_INTERVAL (1s),
// PRICE_VOLATILITY (0.002 per step), START_CASH (10000), TRADE_QTY (1),
// DIP_PCT (1), TAKE_PROFIT_PCT (1.5), STOP_LOSS_PCT (5; 0: none),
// MAX_POSITION (5); STATE_DIR (/state), WATCHER_ADDR (:8080), WATCHER_ID.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hershy/hershy/examples/internal/watcherapi"
)

// settings is the program's configuration, from the environment.
type settings struct {
	seed      uint64
	start     float64
	interval  time.Duration
	vol       float64
	startCash float64
	params    Params
}

func main() {
	s, err := loadSettings()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	watcher := watcherapi.New(watcherapi.DefaultConfig("trading-long"))
	watcher.Manage(func(msg *watcherapi.Message, ctx *watcherapi.Context) error {
		return reduce(s, msg, ctx)
	}, "TradingLong").Cleanup(func(ctx *watcherapi.Context) {
		b := loadBook(ctx)
		price := ctx.Float("lastPrice")
		ctx.Log("stopping: position=%g cash=%.2f equity=%.2f trades=%d", b.Position, b.Cash, b.Equity(price), b.Trades)
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := watcher.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// reduce is the managed function: one run per price tick or command.
func reduce(s settings, msg *watcherapi.Message, ctx *watcherapi.Context) error {
	// The feed, made once per process and resumed where the saved state left it.
	walk := ctx.Memo("priceFeed", func() any {
		w := NewWalk(s.seed, s.start, s.vol)
		w.SkipTo(ctx.Int("feedStep"))
		return w
	}).(*Walk)

	if ctx.Trigger().IsWatcherSig { // InitRun
		if ctx.GetValue("cash") == nil {
			ctx.SetValue("cash", s.startCash)
		}
		ctx.SetValue("paused", ctx.Bool("paused"))
		now := walk.Current()
		ctx.SetValue("lastPrice", now.Price)
		ctx.SetValue("feedStep", now.Step)
	}

	price := ctx.WatchFlow("price", walk.Source(s.interval))

	b := loadBook(ctx)
	if ctx.Triggered("price") && price.IsValid() {
		tick := price.Value.(PriceTick)
		ctx.SetValue("lastPrice", tick.Price)
		ctx.SetValue("feedStep", tick.Step)
		b.Observe(tick.Price)
		if !ctx.Bool("paused") {
			switch side, qty, reason := s.params.Decide(&b, tick.Price); side {
			case "buy":
				execute(ctx, &b, b.Buy, qty, reason)
			case "sell":
				execute(ctx, &b, b.Sell, qty, reason)
			}
		}
	}
	if msg != nil {
		command(s, msg.Content, ctx, &b)
	}
	saveBook(ctx, b)

	if ctx.Trigger().IsWatcherSig {
		ctx.Log("trading-long starting: price=%.2f step=%d position=%g cash=%.2f trades=%d paused=%v",
			ctx.Float("lastPrice"), ctx.Int("feedStep"), b.Position, b.Cash, b.Trades, ctx.Bool("paused"))
	}
	return nil
}

// command runs one message.
func command(s settings, content string, ctx *watcherapi.Context, b *Book) {
	fields := strings.Fields(strings.ToLower(content))
	if len(fields) == 0 {
		ctx.Reply("error: empty command")
		return
	}
	verb, args := fields[0], fields[1:]
	switch {
	case (verb == "buy" || verb == "sell") && len(args) <= 1:
		qty := 0.0 // sell: the whole position
		if verb == "buy" {
			qty = s.params.Qty
		}
		if len(args) == 1 {
			q, err := strconv.ParseFloat(args[0], 64)
			if err != nil || !(q > 0) || math.IsInf(q, 0) {
				ctx.Log("rejected %q: the quantity must be a positive number", content)
				ctx.Reply("error: the quantity must be a positive number, not %q", args[0])
				return
			}
			qty = q
		}
		trade := b.Buy
		if verb == "sell" {
			trade = b.Sell
		}
		if t, ok := execute(ctx, b, trade, qty, "manual"); ok {
			ctx.Reply("%s %g @ %.2f; position=%g cash=%.2f trades=%d", t.Side, t.Qty, t.Price, b.Position, b.Cash, b.Trades)
		}
	case verb == "pause" && len(args) == 0:
		ctx.SetValue("paused", true)
		ctx.Log("automatic trading paused")
		ctx.Reply("paused")
	case verb == "resume" && len(args) == 0:
		ctx.SetValue("paused", false)
		ctx.Log("automatic trading resumed")
		ctx.Reply("resumed")
	case verb == "status" && len(args) == 0:
		price := ctx.Float("lastPrice")
		summary := fmt.Sprintf("price=%.2f position=%g avgEntry=%.4f cash=%.2f equity=%.2f realizedPnl=%.2f trades=%d paused=%v",
			price, b.Position, b.AvgEntry, b.Cash, b.Equity(price), b.RealizedPnL, b.Trades, ctx.Bool("paused"))
		ctx.Log("status: %s", summary)
		ctx.Reply("%s", summary)
	default:
		ctx.Log("rejected %q: unknown command", content)
		ctx.Reply("error: unknown command %q; use buy [qty], sell [qty], pause, resume or status", content)
	}
}

// execute makes a trade at the last price and records it, or logs and replies why not.
func execute(ctx *watcherapi.Context, b *Book, trade func(qty, price float64, reason string) (Trade, error), qty float64, reason string) (Trade, bool) {
	t, err := trade(qty, ctx.Float("lastPrice"), reason)
	if err != nil {
		ctx.Log("no trade (%s): %v", reason, err)
		ctx.Reply("error: %v", err)
		return Trade{}, false
	}
	t.Step = ctx.Int("feedStep")
	t.Time = time.Now().UTC().Format(time.RFC3339Nano)
	ctx.SetValue("lastTrade", t)
	ctx.Log("TRADE #%d %s %g @ %.2f (%s) pnl=%.2f; position=%g cash=%.2f",
		t.Number, t.Side, t.Qty, t.Price, t.Reason, t.PnL, b.Position, b.Cash)
	appendTrade(ctx, t)
	return t, true
}

// appendTrade adds the trade to /state/trades.jsonl (the only writable place).
func appendTrade(ctx *watcherapi.Context, t Trade) {
	dir := ctx.StateDir()
	if dir == "" {
		return
	}
	line, _ := json.Marshal(t)
	f, err := os.OpenFile(filepath.Join(dir, "trades.jsonl"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err == nil {
		_, err = f.Write(append(line, '\n'))
		if closeErr := f.Close(); err == nil {
			err = closeErr
		}
	}
	if err != nil {
		ctx.Log("could not append to trades.jsonl: %v", err)
	}
}

func loadBook(ctx *watcherapi.Context) Book {
	return Book{
		Cash:        ctx.Float("cash"),
		Position:    ctx.Float("position"),
		AvgEntry:    ctx.Float("avgEntry"),
		RealizedPnL: ctx.Float("realizedPnl"),
		Peak:        ctx.Float("peak"),
		Trades:      ctx.Int("trades"),
	}
}

func saveBook(ctx *watcherapi.Context, b Book) {
	price := ctx.Float("lastPrice")
	ctx.SetValue("cash", b.Cash)
	ctx.SetValue("position", b.Position)
	ctx.SetValue("avgEntry", b.AvgEntry)
	ctx.SetValue("realizedPnl", b.RealizedPnL)
	ctx.SetValue("peak", b.Peak)
	ctx.SetValue("trades", b.Trades)
	ctx.SetValue("unrealizedPnl", b.Unrealized(price))
	ctx.SetValue("equity", b.Equity(price))
}

func loadSettings() (settings, error) {
	s := settings{}
	var err error
	seed, err := envInt("PRICE_SEED", 42)
	if err != nil {
		return s, err
	}
	s.seed = uint64(seed)
	interval := os.Getenv("PRICE_INTERVAL")
	s.interval = time.Second
	if interval != "" {
		if s.interval, err = time.ParseDuration(interval); err != nil || s.interval <= 0 {
			return s, fmt.Errorf("PRICE_INTERVAL=%q is not a positive duration", interval)
		}
	}
	floats := []struct {
		name  string
		def   float64
		to    *float64
		scale float64
	}{
		{"PRICE_START", 100, &s.start, 1},
		{"PRICE_VOLATILITY", 0.002, &s.vol, 1},
		{"START_CASH", 10000, &s.startCash, 1},
		{"TRADE_QTY", 1, &s.params.Qty, 1},
		{"DIP_PCT", 1, &s.params.Dip, 0.01},
		{"TAKE_PROFIT_PCT", 1.5, &s.params.TakeProfit, 0.01},
		{"STOP_LOSS_PCT", 5, &s.params.StopLoss, 0.01},
		{"MAX_POSITION", 5, &s.params.MaxPosition, 1},
	}
	for _, f := range floats {
		v, err := envFloat(f.name, f.def)
		if err != nil {
			return s, err
		}
		*f.to = v * f.scale
	}
	if s.start <= 0 || s.params.Qty <= 0 {
		return s, fmt.Errorf("PRICE_START and TRADE_QTY must be positive")
	}
	return s, nil
}

func envInt(name string, def int64) (int64, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not an integer", name, v)
	}
	return n, nil
}

func envFloat(name string, def float64) (float64, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
		return 0, fmt.Errorf("%s=%q is not a non-negative number", name, v)
	}
	return f, nil
}
