package main

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hershy/hershy/examples/internal/watcherapi"
)

// PriceTick is one price of the simulated feed.
type PriceTick struct {
	Step  int64     `json:"step"`
	Price float64   `json:"price"`
	Time  time.Time `json:"time"`
}

// Walk is the simulated price feed: a deterministic random walk (no network).
// The log-price takes Gaussian steps of size vol and is pulled gently back
// toward the start price, so it wanders without drifting away for good. The
// same seed always gives the same prices, step by step: step k is reached
// again after a restart by replaying the walk from step 0.
type Walk struct {
	mu       sync.Mutex
	seed     uint64
	start    float64
	vol      float64
	rng      *rand.Rand
	step     int64
	logPrice float64
}

// reversion is how much of the distance to the start log-price each step takes back.
const reversion = 0.002

// NewWalk starts a walk at step 0, at price start.
func NewWalk(seed uint64, start, vol float64) *Walk {
	return &Walk{
		seed:     seed,
		start:    start,
		vol:      vol,
		rng:      rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
		logPrice: math.Log(start),
	}
}

func (w *Walk) advance() {
	anchor := math.Log(w.start)
	w.logPrice += reversion*(anchor-w.logPrice) + w.vol*w.rng.NormFloat64()
	w.step++
}

// SkipTo replays the walk up to step (a no-op if it is already there or past it).
func (w *Walk) SkipTo(step int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.step < step {
		w.advance()
	}
}

// Current is the price at the current step.
func (w *Walk) Current() PriceTick {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tick()
}

// Next advances one step and returns the new price.
func (w *Walk) Next() PriceTick {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance()
	return w.tick()
}

func (w *Walk) tick() PriceTick {
	return PriceTick{Step: w.step, Price: round(math.Exp(w.logPrice), 2), Time: time.Now().UTC()}
}

// MarshalJSON shows the walk in GET /watcher/memoCache.
func (w *Walk) MarshalJSON() ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return json.Marshal(map[string]any{
		"seed": w.seed, "startPrice": w.start, "volatility": w.vol,
		"step": w.step, "price": round(math.Exp(w.logPrice), 2),
	})
}

// Source is the walk as a WatchFlow source: one new price every interval.
func (w *Walk) Source(interval time.Duration) func(ctx context.Context) (<-chan watcherapi.FlowValue, error) {
	return func(ctx context.Context) (<-chan watcherapi.FlowValue, error) {
		ch := make(chan watcherapi.FlowValue, 1)
		go func() {
			ticker := time.NewTicker(interval)
			defer ticker.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-ticker.C:
				}
				select {
				case ch <- watcherapi.FlowValue{V: w.Next()}:
				case <-ctx.Done():
					return
				}
			}
		}()
		return ch, nil
	}
}

// round rounds x to the given number of decimal places.
func round(x float64, places int) float64 {
	scale := math.Pow(10, float64(places))
	return math.Round(x*scale) / scale
}
