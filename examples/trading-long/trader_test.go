package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hershy/hershy/examples/internal/watcherapi"
)

func TestBuySellAccounting(t *testing.T) {
	b := Book{Cash: 1000}
	if _, err := b.Buy(2, 100, "manual"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Buy(2, 110, "manual"); err != nil {
		t.Fatal(err)
	}
	if b.Position != 4 || b.AvgEntry != 105 || b.Cash != 580 || b.Trades != 2 {
		t.Fatalf("after two buys: %+v", b)
	}
	if _, err := b.Buy(10, 100, "manual"); err == nil {
		t.Fatal("bought without the cash")
	}
	if _, err := b.Sell(5, 100, "manual"); err == nil {
		t.Fatal("sold more than the position (long only)")
	}
	tr, err := b.Sell(0, 120, "manual") // 0: everything
	if err != nil {
		t.Fatal(err)
	}
	if tr.Qty != 4 || tr.PnL != 60 || b.Position != 0 || b.AvgEntry != 0 || b.Cash != 1060 || b.RealizedPnL != 60 || b.Trades != 3 {
		t.Fatalf("after selling all: trade %+v, book %+v", tr, b)
	}
	if _, err := b.Sell(0, 120, "manual"); err == nil {
		t.Fatal("sold with no position")
	}
}

func TestStrategyBuysDipsAndTakesProfit(t *testing.T) {
	p := Params{Qty: 1, Dip: 0.01, TakeProfit: 0.015, StopLoss: 0.05, MaxPosition: 2}
	b := Book{Cash: 1000}
	decide := func(price float64) string {
		b.Observe(price)
		side, qty, reason := p.Decide(&b, price)
		switch side {
		case "buy":
			if _, err := b.Buy(qty, price, reason); err != nil {
				t.Fatal(err)
			}
		case "sell":
			if _, err := b.Sell(qty, price, reason); err != nil {
				t.Fatal(err)
			}
		}
		return side + ":" + reason
	}
	steps := []struct {
		price float64
		want  string
	}{
		{100, ":"},        // the peak
		{99.5, ":"},       // not 1% down
		{98.9, "buy:dip"}, // 1.1% down
		{98.5, ":"},       // the peak is now 98.9
		{97.8, "buy:dip"}, // 1.1% below 98.9
		{96, ":"},         // MaxPosition (2) reached
	}
	for i, s := range steps {
		if got := decide(s.price); got != s.want {
			t.Fatalf("step %d at %.2f: %s, want %s (book %+v)", i, s.price, got, s.want, b)
		}
	}
	if got := decide(99.8); got != ":" { // below 98.35 * 1.015 = 99.83
		t.Fatalf("sold at 99.8: %s", got)
	}
	if got := decide(99.9); got != "sell:take-profit" {
		t.Fatalf("at 99.9: %s (book %+v)", got, b)
	}
	if b.Position != 0 || b.Trades != 3 {
		t.Fatalf("book %+v", b)
	}
	// Stop-loss.
	b.Peak = 0
	decide(100)
	if got := decide(98.9); got != "buy:dip" {
		t.Fatal(got)
	}
	if got := decide(93.9); got != "sell:stop-loss" {
		t.Fatalf("at 93.9: %s", got)
	}
}

func TestWalkIsDeterministicAndResumable(t *testing.T) {
	a, b := NewWalk(7, 100, 0.002), NewWalk(7, 100, 0.002)
	var last PriceTick
	for i := 0; i < 1000; i++ {
		last = a.Next()
		if got := b.Next(); got.Price != last.Price || got.Step != last.Step {
			t.Fatalf("step %d differs: %v vs %v", i, got, last)
		}
	}
	c := NewWalk(7, 100, 0.002)
	c.SkipTo(1000)
	if got := c.Current(); got.Price != last.Price || got.Step != 1000 {
		t.Fatalf("resumed at %v, want %v", got, last)
	}
	if d := NewWalk(8, 100, 0.002); d.Next().Price == NewWalk(7, 100, 0.002).Next().Price {
		t.Fatal("another seed gave the same first price")
	}
	// It moves, but stays in a sane band.
	w := NewWalk(1, 100, 0.002)
	lo, hi := 100.0, 100.0
	for i := 0; i < 100000; i++ {
		p := w.Next().Price
		lo, hi = min(lo, p), max(hi, p)
	}
	if lo > 99 || hi < 101 || lo < 50 || hi > 200 {
		t.Fatalf("range over 100000 steps: %.2f..%.2f", lo, hi)
	}
}

// program runs the real managed function behind the real WatcherAPI handler.
func program(t *testing.T, stateDir string) (send func(string) map[string]any, vars func() map[string]any, stop func()) {
	t.Helper()
	t.Setenv("PRICE_INTERVAL", "20ms")
	s, err := loadSettings()
	if err != nil {
		t.Fatal(err)
	}
	cfg := watcherapi.DefaultConfig("trading-long")
	cfg.Addr, cfg.StateDir, cfg.Stdout = "127.0.0.1:0", stateDir, nil
	w := watcherapi.New(cfg).Manage(func(msg *watcherapi.Message, ctx *watcherapi.Context) error {
		return reduce(s, msg, ctx)
	}, "TradingLong")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	get := func(method, path, body string) map[string]any {
		rec := httptest.NewRecorder()
		w.Handler().ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %s: %v: %q", method, path, err, rec.Body.String())
		}
		return out
	}
	deadline := time.Now().Add(5 * time.Second)
	for get("GET", "/watcher/status", "")["state"] == "NotRun" || get("GET", "/watcher/status", "")["state"] == "InitRun" {
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	send = func(content string) map[string]any {
		body, _ := json.Marshal(map[string]string{"content": content})
		return get("POST", "/watcher/message", string(body))
	}
	vars = func() map[string]any { return get("GET", "/watcher/varState", "")["variables"].(map[string]any) }
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(stop)
	return send, vars, stop
}

func TestCommandsThroughTheWatcherAPI(t *testing.T) {
	dir := t.TempDir()
	send, vars, stop := program(t, dir)

	if r := send("pause"); r["reply"] != "paused" {
		t.Fatalf("pause: %v", r)
	}
	before := vars()
	r := send("buy 2")
	if r["handled"] != true || !strings.HasPrefix(r["reply"].(string), "buy 2 @ ") {
		t.Fatalf("buy 2: %v", r)
	}
	after := vars()
	if after["trades"].(float64) != before["trades"].(float64)+1 || after["position"].(float64) != before["position"].(float64)+2 {
		t.Fatalf("buy 2 did not show: before %v, after %v", before, after)
	}
	if lt := after["lastTrade"].(map[string]any); lt["side"] != "buy" || lt["reason"] != "manual" {
		t.Fatalf("lastTrade = %v", lt)
	}
	if r := send("sell"); !strings.HasPrefix(r["reply"].(string), "sell 2 @ ") {
		t.Fatalf("sell: %v", r)
	}
	if r := send("sell"); r["reply"] != "error: no position to sell" {
		t.Fatalf("sell again: %v", r)
	}
	if r := send("buy 1000000"); !strings.HasPrefix(r["reply"].(string), "error: not enough cash") {
		t.Fatalf("buy too much: %v", r)
	}
	for _, bad := range []string{"buy -1", "buy x", "sell 1 2", "hold", "pause now"} {
		if r := send(bad); !strings.HasPrefix(r["reply"].(string), "error: ") {
			t.Fatalf("%q: %v", bad, r)
		}
	}
	if r := send("status"); !strings.Contains(r["reply"].(string), "trades=2 paused=true") {
		t.Fatalf("status: %v", r)
	}
	v := vars()
	for _, key := range []string{"position", "cash", "trades", "lastPrice", "avgEntry", "realizedPnl", "unrealizedPnl", "equity", "paused", "peak", "feedStep", "lastTrade", "price"} {
		if _, ok := v[key]; !ok {
			t.Errorf("varState has no %q: %v", key, v)
		}
	}
	time.Sleep(100 * time.Millisecond) // a few price ticks
	stop()

	lines, err := os.ReadFile(filepath.Join(dir, "trades.jsonl"))
	if err != nil || strings.Count(string(lines), "\n") != 2 {
		t.Fatalf("trades.jsonl = %q, %v", lines, err)
	}

	// A restart keeps the account and resumes the feed where it was.
	step := v["feedStep"].(float64)
	send, vars, _ = program(t, dir)
	v = vars()
	if v["trades"].(float64) != 2 || v["paused"] != true || v["feedStep"].(float64) < step {
		t.Fatalf("after restart: %v", v)
	}
	if r := send("resume"); r["reply"] != "resumed" {
		t.Fatalf("resume: %v", r)
	}
}
