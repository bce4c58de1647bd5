// Every program the caller may see, kept live from one `/events` stream (no
// polling), and each program's state timeline as the events tell it.

import { useEffect, useState } from "preact/hooks";
import { EventStream, type Program, type SseMessage, type StreamState, toProgram } from "./api";

export interface TimelineEntry {
  state: string;
  at: string | null;
  revision: number | null;
  error: string;
}

/** How many state changes the timeline keeps per program. */
const TIMELINE_LENGTH = 200;

class ProgramStore {
  programs = new Map<string, Program>();
  timelines = new Map<string, TimelineEntry[]>();
  /** Programs seen deleted while the page was open. */
  deleted = new Set<string>();
  synced = false;
  state: StreamState = "stopped";
  detail = "";
  private stream: EventStream | null = null;
  private readonly listeners = new Set<() => void>();

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  start(): void {
    this.stop();
    this.stream = new EventStream(
      "/events",
      (fresh) => {
        if (fresh) this.forget();
      },
      (message) => this.apply(message),
      (state, detail) => {
        this.state = state;
        this.detail = detail;
        this.changed();
      },
    );
    this.stream.start();
  }

  stop(): void {
    this.stream?.stop();
    this.stream = null;
    this.forget();
  }

  private forget(): void {
    this.programs = new Map();
    this.synced = false;
    this.changed();
  }

  private apply(message: SseMessage): void {
    let data: unknown;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    switch (message.event) {
      case "resync":
        this.forget();
        return;
      case "synced":
        this.synced = true;
        break;
      case "snapshot":
      case "created":
      case "updated":
      case "deleted": {
        const program = toProgram(data);
        if (program === null) return;
        this.programs = new Map(this.programs);
        if (message.event === "deleted" || program.state === "Deleted") {
          this.programs.delete(program.id);
          this.deleted.add(program.id);
        } else {
          this.programs.set(program.id, program);
        }
        this.record(program, message.id === null ? null : Number(message.id));
        break;
      }
      default:
        return; // an event this page does not know: later Hosts may add some
    }
    this.changed();
  }

  private record(program: Program, revision: number | null): void {
    const timeline = this.timelines.get(program.id) ?? [];
    const last = timeline[timeline.length - 1];
    if (last !== undefined && last.state === program.state && last.error === program.error) return;
    const entry = { state: program.state, at: program.updatedAt, revision, error: program.error };
    this.timelines.set(program.id, [...timeline, entry].slice(-TIMELINE_LENGTH));
  }
}

export const store = new ProgramStore();

/** Re-renders the component on every change of the store. */
export function useStore(): ProgramStore {
  const [, setTick] = useState(0);
  useEffect(() => store.subscribe(() => setTick((tick) => tick + 1)), []);
  return store;
}
