// Small pieces every page uses: navigation, state badges, times, answers.

import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError } from "./api";

export const BASE = "/ui";

export function navigate(path: string): void {
  history.pushState(null, "", BASE + path);
  window.dispatchEvent(new Event("hershy:navigate"));
}

export function Link(props: { to: string; children: ComponentChildren; class?: string }) {
  return (
    <a
      href={BASE + props.to}
      class={props.class}
      onClick={(event) => {
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
        event.preventDefault();
        navigate(props.to);
      }}
    >
      {props.children}
    </a>
  );
}

export function StateBadge(props: { state: string }) {
  return <span class={`badge state-${props.state.toLowerCase()}`}>{props.state}</span>;
}

/** "3m", "2h 5m": how long ago `since` was. */
export function age(since: string | null, now: number): string {
  if (since === null) return "—";
  const seconds = Math.max(0, Math.floor((now - Date.parse(since)) / 1000));
  if (!Number.isFinite(seconds)) return "—";
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d`;
}

export function localTime(at: string | null): string {
  if (at === null || at === "") return "—";
  const date = new Date(at);
  return Number.isNaN(date.getTime()) ? at : date.toLocaleString();
}

/** The clock, ticking every `ms` (for ages). */
export function useNow(ms = 5000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}

/** What an action's answer says, for a person: the API's reason, never an alert box. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    const state = error.state !== null ? ` (state: ${error.state})` : "";
    return `${error.status} ${error.reason}: ${error.message}${state}`;
  }
  if (error instanceof Error) return error.message;
  return String(error);
}

export type Answer = { ok: boolean; text: string } | null;

export function AnswerNote(props: { answer: Answer; id?: string }) {
  if (props.answer === null) return <p id={props.id} class="answer" role="status" aria-live="polite" />;
  return (
    <p
      id={props.id}
      class={props.answer.ok ? "answer ok" : "answer failed"}
      role={props.answer.ok ? "status" : "alert"}
      aria-live="polite"
    >
      {props.answer.text}
    </p>
  );
}

/** Any value as indented text: what a program answers is shown, never interpreted. */
export function pretty(value: unknown): string {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2) ?? String(value);
  } catch {
    return String(value);
  }
}
