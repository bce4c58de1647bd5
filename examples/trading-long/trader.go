package main

import (
	"errors"
	"fmt"
	"math"
)

// Params is the strategy: long only, buy on dips, take profit (or cut a loss).
type Params struct {
	Qty         float64 // units per automatic buy (and the default of "buy")
	Dip         float64 // buy when the price is this fraction below the peak (0.01 = 1%)
	TakeProfit  float64 // sell all when the price is this fraction above the average entry
	StopLoss    float64 // sell all when the price is this fraction below the average entry (0: never)
	MaxPosition float64 // automatic buys stop at this many units
}

// Book is the account: cash, the position and its average entry price.
type Book struct {
	Cash        float64
	Position    float64
	AvgEntry    float64
	RealizedPnL float64
	Peak        float64 // the highest price since the last trade
	Trades      int64
}

// Trade is one executed trade.
type Trade struct {
	Number int64   `json:"number"` // 1 for the first trade ever
	Side   string  `json:"side"`   // "buy" or "sell"
	Qty    float64 `json:"qty"`
	Price  float64 `json:"price"`
	Reason string  `json:"reason"` // "dip", "take-profit", "stop-loss" or "manual"
	PnL    float64 `json:"pnl"`    // realised by a sell
	Step   int64   `json:"step"`   // the feed step it happened at
	Time   string  `json:"time"`
}

// epsilon absorbs float noise in quantities.
const epsilon = 1e-9

// Observe follows the price: the peak rises with it.
func (b *Book) Observe(price float64) {
	if price > b.Peak || b.Peak == 0 {
		b.Peak = price
	}
}

// Buy buys qty units at price, if the cash allows.
func (b *Book) Buy(qty, price float64, reason string) (Trade, error) {
	if !(qty > 0) || math.IsInf(qty, 0) {
		return Trade{}, fmt.Errorf("quantity must be a positive number, not %g", qty)
	}
	if !(price > 0) {
		return Trade{}, errors.New("no price yet")
	}
	cost := qty * price
	if cost > b.Cash+epsilon {
		return Trade{}, fmt.Errorf("not enough cash: %g x %.2f = %.2f, cash is %.2f", qty, price, cost, b.Cash)
	}
	b.AvgEntry = round((b.AvgEntry*b.Position+cost)/(b.Position+qty), 4)
	b.Position = round(b.Position+qty, 8)
	b.Cash = round(b.Cash-cost, 2)
	b.Peak = price
	b.Trades++
	return Trade{Number: b.Trades, Side: "buy", Qty: qty, Price: price, Reason: reason}, nil
}

// Sell sells qty units at price (qty 0: the whole position).
func (b *Book) Sell(qty, price float64, reason string) (Trade, error) {
	if b.Position <= epsilon {
		return Trade{}, errors.New("no position to sell")
	}
	if qty == 0 {
		qty = b.Position
	}
	if !(qty > 0) || math.IsInf(qty, 0) {
		return Trade{}, fmt.Errorf("quantity must be a positive number, not %g", qty)
	}
	if qty > b.Position+epsilon {
		return Trade{}, fmt.Errorf("cannot sell %g: the position is %g (long only)", qty, b.Position)
	}
	if !(price > 0) {
		return Trade{}, errors.New("no price yet")
	}
	pnl := round((price-b.AvgEntry)*qty, 2)
	b.Cash = round(b.Cash+qty*price, 2)
	b.Position = round(b.Position-qty, 8)
	b.RealizedPnL = round(b.RealizedPnL+pnl, 2)
	if b.Position <= epsilon {
		b.Position, b.AvgEntry = 0, 0
	}
	b.Peak = price
	b.Trades++
	return Trade{Number: b.Trades, Side: "sell", Qty: qty, Price: price, Reason: reason, PnL: pnl}, nil
}

// Decide is the strategy's move at price: "buy", "sell" or "" (nothing), with
// the quantity and the reason. Call Observe first.
func (p Params) Decide(b *Book, price float64) (side string, qty float64, reason string) {
	if b.Position > epsilon {
		if price >= b.AvgEntry*(1+p.TakeProfit) {
			return "sell", b.Position, "take-profit"
		}
		if p.StopLoss > 0 && price <= b.AvgEntry*(1-p.StopLoss) {
			return "sell", b.Position, "stop-loss"
		}
	}
	if b.Position+p.Qty <= p.MaxPosition+epsilon && price <= b.Peak*(1-p.Dip) && p.Qty*price <= b.Cash {
		return "buy", p.Qty, "dip"
	}
	return "", 0, ""
}

// Equity is the account's value at price.
func (b *Book) Equity(price float64) float64 { return round(b.Cash+b.Position*price, 2) }

// Unrealized is the open position's profit or loss at price.
func (b *Book) Unrealized(price float64) float64 {
	return round((price-b.AvgEntry)*b.Position, 2)
}
