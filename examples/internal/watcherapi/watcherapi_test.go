package watcherapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// start runs w until the test ends (or stop is called) and waits for InitRun.
func start(t *testing.T, w *Watcher) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		state := w.state
		w.mu.Unlock()
		if state == StateReady || state == StateRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher never became Ready (state %s)", state)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return within 5 s of cancel")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig("test")
	cfg.Addr = "127.0.0.1:0"
	cfg.StateDir = t.TempDir()
	cfg.Stdout = nil
	return cfg
}

func call(t *testing.T, w *Watcher, method, path, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	w.Handler().ServeHTTP(rec, req)
	var answer map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
		t.Fatalf("%s %s: not JSON (%v): %q", method, path, err, rec.Body.String())
	}
	return rec.Code, answer
}

func counter(msg *Message, ctx *Context) error {
	if msg == nil {
		ctx.SetValue("count", ctx.Int("count"))
		return nil
	}
	switch msg.Content {
	case "inc":
		ctx.SetValue("count", ctx.Int("count")+1)
		ctx.Log("count is %d", ctx.Int("count"))
		ctx.Reply("count=%d", ctx.Int("count"))
	case "fail":
		return errors.New("asked to fail")
	case "panic":
		panic("asked to panic")
	}
	return nil
}

func TestStatusHasHershKeys(t *testing.T) {
	w := New(testConfig(t)).Manage(counter, "Counter")
	start(t, w)
	code, status := call(t, w, "GET", "/watcher/status", "")
	if code != 200 {
		t.Fatalf("status answered %d", code)
	}
	for _, key := range []string{"state", "isRunning", "watcherID", "uptime", "lastUpdate"} {
		if _, ok := status[key]; !ok {
			t.Errorf("status has no %q: %v", key, status)
		}
	}
	if status["state"] != "Ready" || status["isRunning"] != true || status["watcherID"] != "test" {
		t.Errorf("status = %v", status)
	}
}

func TestMessageIsHandledBeforeTheAnswer(t *testing.T) {
	w := New(testConfig(t)).Manage(counter, "Counter")
	start(t, w)
	code, answer := call(t, w, "POST", "/watcher/message", `{"content":"inc"}`)
	if code != 200 || answer["status"] != "message sent" || answer["handled"] != true || answer["reply"] != "count=1" {
		t.Fatalf("POST message = %d %v", code, answer)
	}
	_, vars := call(t, w, "GET", "/watcher/varState", "")
	if got := vars["variables"].(map[string]any)["count"]; got != 1.0 {
		t.Fatalf("count = %v, want 1 (%v)", got, vars)
	}
	_, logs := call(t, w, "GET", "/watcher/logs?type=effect", "")
	effect := logs["effectLogs"].([]any)
	if len(effect) != 1 || effect[0].(map[string]any)["Message"] != "count is 1" {
		t.Fatalf("effect logs = %v", logs)
	}
	if _, ok := logs["reduceLogs"]; ok {
		t.Fatalf("type=effect answered other logs too: %v", logs)
	}
}

func TestBadMessages(t *testing.T) {
	w := New(testConfig(t)).Manage(counter, "Counter")
	start(t, w)
	for _, body := range []string{``, `{`, `{"content":""}`, `{"content":3}`} {
		code, answer := call(t, w, "POST", "/watcher/message", body)
		if code != 400 || answer["error"] == nil {
			t.Errorf("body %q: %d %v", body, code, answer)
		}
	}
	code, answer := call(t, w, "GET", "/watcher/logs?type=nope", "")
	if code != 400 || answer["error"] == nil {
		t.Errorf("bad log type: %d %v", code, answer)
	}
}

func TestFailuresAndPanicsAreLoggedAndSurvived(t *testing.T) {
	w := New(testConfig(t)).Manage(counter, "Counter")
	start(t, w)
	_, answer := call(t, w, "POST", "/watcher/message", `{"content":"fail"}`)
	if answer["reply"] != "error: asked to fail" {
		t.Errorf("fail reply = %v", answer)
	}
	_, answer = call(t, w, "POST", "/watcher/message", `{"content":"panic"}`)
	if answer["reply"] != "error: panic: asked to panic" {
		t.Errorf("panic reply = %v", answer)
	}
	_, logs := call(t, w, "GET", "/watcher/logs?type=state_fault", "")
	if n := len(logs["stateFaultLogs"].([]any)); n != 1 {
		t.Errorf("state fault logs = %v", logs)
	}
	_, answer = call(t, w, "POST", "/watcher/message", `{"content":"inc"}`)
	if answer["reply"] != "count=1" {
		t.Errorf("after a panic: %v", answer)
	}
}

func TestStateSurvivesARestart(t *testing.T) {
	cfg := testConfig(t)
	w := New(cfg).Manage(counter, "Counter")
	stop := start(t, w)
	for i := 0; i < 3; i++ {
		call(t, w, "POST", "/watcher/message", `{"content":"inc"}`)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(cfg.StateDir, "context.json"))
	if err != nil || !strings.Contains(string(data), `"count": 3`) {
		t.Fatalf("state file = %q, %v", data, err)
	}
	w2 := New(cfg).Manage(counter, "Counter")
	start(t, w2)
	_, answer := call(t, w2, "POST", "/watcher/message", `{"content":"inc"}`)
	if answer["reply"] != "count=4" {
		t.Fatalf("after restart: %v", answer)
	}
	leftovers, _ := filepath.Glob(filepath.Join(cfg.StateDir, ".*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
}

func TestWatchTickAndWatchCallTrigger(t *testing.T) {
	polls := 0
	w := New(testConfig(t)).Manage(func(msg *Message, ctx *Context) error {
		tick := ctx.WatchTick("tick", 10*time.Millisecond)
		ctx.WatchCall("poll", 10*time.Millisecond, func(prev any) (any, bool, error) {
			polls++
			if polls == 3 {
				return prev, false, errors.New("third poll fails")
			}
			return polls, true, nil
		})
		ctx.Memo("client", func() any { return map[string]string{"name": "client"} })
		ctx.Memo("channel", func() any { return make(chan int) })
		if ctx.Triggered("tick") {
			ctx.SetValue("ticks", tick.TickCount)
		}
		return nil
	}, "Ticker")
	start(t, w)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, vars := call(t, w, "GET", "/watcher/varState", "")
		v := vars["variables"].(map[string]any)
		if ticks, _ := v["ticks"].(float64); ticks >= 3 {
			if _, ok := v["tick"].(map[string]any)["tickCount"]; !ok {
				t.Fatalf("tick = %v", v["tick"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ticks never reached 3: %v", vars)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, watching := call(t, w, "GET", "/watcher/watching", "")
	if watching["count"] != 2.0 {
		t.Errorf("watching = %v", watching)
	}
	_, memo := call(t, w, "GET", "/watcher/memoCache", "")
	entries := memo["entries"].(map[string]any)
	if entries["channel"] != "<chan int>" || entries["client"].(map[string]any)["name"] != "client" {
		t.Errorf("memo = %v", memo)
	}
	_, logs := call(t, w, "GET", "/watcher/logs?type=watch_error", "")
	if len(logs["watchErrorLogs"].([]any)) != 1 {
		t.Errorf("watch errors = %v", logs)
	}
	_, signals := call(t, w, "GET", "/watcher/signals", "")
	for _, key := range []string{"varSigCount", "userSigCount", "watcherSigCount", "totalPending", "recentSignals", "timestamp"} {
		if _, ok := signals[key]; !ok {
			t.Errorf("signals has no %q", key)
		}
	}
	_, config := call(t, w, "GET", "/watcher/config", "")
	if config["config"].(map[string]any)["serverPort"] != 0.0 {
		t.Errorf("config = %v", config)
	}
}

func TestStopRunsCleanupAndRefusesMessages(t *testing.T) {
	cleaned := false
	w := New(testConfig(t)).Manage(counter, "Counter").Cleanup(func(ctx *Context) {
		cleaned = true
		ctx.SetValue("stoppedCleanly", true)
	})
	stop := start(t, w)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !cleaned {
		t.Fatal("cleanup did not run")
	}
	code, answer := call(t, w, "POST", "/watcher/message", `{"content":"inc"}`)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("a message after stop: %d %v", code, answer)
	}
	_, status := call(t, w, "GET", "/watcher/status", "")
	if status["state"] != "Stopped" || status["isRunning"] != false {
		t.Fatalf("status after stop = %v", status)
	}
}

func TestUnreadableStateStartsEmptyAndKeepsTheFile(t *testing.T) {
	cfg := testConfig(t)
	path := filepath.Join(cfg.StateDir, "context.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := New(cfg).Manage(counter, "Counter")
	start(t, w)
	_, logs := call(t, w, "GET", "/watcher/logs?type=state_fault", "")
	if len(logs["stateFaultLogs"].([]any)) != 1 {
		t.Fatalf("no state fault logged: %v", logs)
	}
	if data, err := os.ReadFile(path + ".unreadable"); err != nil || string(data) != "{not json" {
		t.Fatalf("the unreadable file was not kept: %q %v", data, err)
	}
}
