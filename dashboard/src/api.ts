// The REST API as the dashboard calls it: same origin, the token only in
// `Authorization` (kept in this tab's sessionStorage: never a URL, never a
// cookie), errors as ApiError with the API's own reason. Answers are read
// defensively: unknown keys are ignored, missing ones have defaults.

const TOKEN_KEY = "hershy.token";

/** False when the Host runs with --no-auth (the page says so in a meta tag). */
export const authEnabled =
  document.querySelector('meta[name="hershy-auth"]')?.getAttribute("content") !== "off";

export function storedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

/** An answer that was not 2xx, with the API's `{error, code, message}` when it sent one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly state: string | null = null,
  ) {
    super(message);
  }
}

/** Fired when the Host does not take the token: the app goes back to sign-in. */
export const UNAUTHENTICATED = "hershy:unauthenticated";

function headersWith(extra: Record<string, string> = {}): Headers {
  const headers = new Headers(extra);
  const token = storedToken();
  if (token !== null) headers.set("Authorization", `Bearer ${token}`);
  return headers;
}

export async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => "");
  let reason = `HTTP_${response.status}`;
  let message = text.slice(0, 400) || response.statusText || `HTTP ${response.status}`;
  let state: string | null = null;
  try {
    const body: unknown = JSON.parse(text);
    if (isRecord(body)) {
      if (typeof body.error === "string") reason = body.error;
      const said = body.message ?? body.error_msg;
      if (typeof said === "string" && said !== "") message = said;
      if (typeof body.state === "string") state = body.state;
    }
  } catch {
    // Not JSON (a program's own answer, say): the text is the message.
  }
  if (response.status === 401) window.dispatchEvent(new Event(UNAUTHENTICATED));
  return new ApiError(response.status, reason, message, state);
}

export interface CallOptions {
  body?: BodyInit | null;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** A call to the API; throws ApiError unless the answer is 2xx. */
export async function call(method: string, path: string, options: CallOptions = {}): Promise<Response> {
  const response = await fetch(path, {
    method,
    headers: headersWith(options.headers),
    body: options.body ?? null,
    signal: options.signal ?? null,
    credentials: "omit",
    cache: "no-store",
    redirect: "error",
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function callJson(method: string, path: string, body?: unknown): Promise<unknown> {
  const options: CallOptions =
    body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
  const response = await call(method, path, options);
  return response.json();
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// --- shapes -------------------------------------------------------------------

export interface Program {
  id: string;
  user: string;
  state: string;
  restarts: number;
  lastExitCode: number | null;
  createdAt: string | null;
  updatedAt: string | null;
  readyAt: string | null;
  nextRestartAt: string | null;
  runtime: string;
  error: string;
  proxyUrl: string;
  buildId: string;
  imageId: string;
  containerId: string;
  run: number;
  revision: number;
  resources: Record<string, unknown>;
  /** The name its user chose ("" if none). */
  alias: string;
  /** Plain environment variables. */
  env: Record<string, string>;
  /** What the program's own WatcherAPI last reported (Hersh: Ready, InitRun, ...). */
  watcherState: string;
  /** The Host's verdict: unknown, initialising, healthy, degraded, unhealthy. */
  health: string;
  healthReason: string;
  watcherAnsweredAt: string | null;
  restartPolicy: string;
  stopSignal: string;
  /** The revision it runs, and the newest one (which may still be rolling out). */
  revisionNumber: number;
  latestRevisionNumber: number;
  /** The latest deploy, update or rollback; null before the first. */
  rollout: Rollout | null;
}

export interface Rollout {
  target: number;
  previous: number;
  /** BUILDING, SWITCHING, REVERTING (under way); SUCCEEDED, REVERTED, CANCELLED, FAILED. */
  phase: string;
  reason: string;
}

export const ROLLOUT_UNDER_WAY = ["BUILDING", "SWITCHING", "REVERTING"];

function toRollout(raw: unknown): Rollout | null {
  if (!isRecord(raw)) return null;
  return {
    target: num(raw.target_revision_number),
    previous: num(raw.previous_revision_number),
    phase: str(raw.phase, "UNKNOWN"),
    reason: str(raw.reason),
  };
}

/** One revision as `GET /programs/{id}/revisions` lists it. */
export interface Revision {
  number: number;
  buildId: string;
  createdBy: string;
  createdAt: string | null;
  description: string;
  changedFields: string[];
  kept: boolean;
  current: boolean;
}

export function toRevisions(raw: unknown): Revision[] {
  if (!isRecord(raw) || !Array.isArray(raw.revisions)) return [];
  const found: Revision[] = [];
  for (const item of raw.revisions) {
    if (!isRecord(item) || typeof item.number !== "number") continue;
    found.push({
      number: item.number,
      buildId: str(item.build_id),
      createdBy: str(item.created_by),
      createdAt: optionalString(item.created_at),
      description: str(item.description),
      changedFields: Array.isArray(item.changed_fields)
        ? item.changed_fields.filter((field): field is string => typeof field === "string")
        : [],
      kept: item.kept === true,
      current: item.current === true,
    });
  }
  return found;
}

/** A secret as the API shows it: never its value. */
export interface Secret {
  name: string;
  version: number;
  updatedAt: string | null;
}

export function toSecrets(raw: unknown): Secret[] {
  if (!isRecord(raw) || !Array.isArray(raw.secrets)) return [];
  const found: Secret[] = [];
  for (const item of raw.secrets) {
    if (!isRecord(item) || typeof item.name !== "string") continue;
    found.push({ name: item.name, version: num(item.version), updatedAt: optionalString(item.updated_at) });
  }
  return found;
}

function stringMap(value: unknown): Record<string, string> {
  const map: Record<string, string> = {};
  if (!isRecord(value)) return map;
  for (const [key, item] of Object.entries(value)) if (typeof item === "string") map[key] = item;
  return map;
}

function str(value: unknown, fallback = ""): string {
  return typeof value === "string" ? value : fallback;
}

function num(value: unknown, fallback = 0): number {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

function optionalString(value: unknown): string | null {
  return typeof value === "string" && value !== "" ? value : null;
}

export function toProgram(raw: unknown): Program | null {
  if (!isRecord(raw)) return null;
  const id = str(raw.program_id);
  if (id === "") return null;
  return {
    id,
    user: str(raw.user_id),
    state: str(raw.state, "Unknown"),
    restarts: num(raw.restart_count),
    lastExitCode: typeof raw.last_exit_code === "number" ? raw.last_exit_code : null,
    createdAt: optionalString(raw.created_at),
    updatedAt: optionalString(raw.updated_at),
    readyAt: optionalString(raw.ready_at),
    nextRestartAt: optionalString(raw.next_restart_at),
    runtime: str(raw.runtime),
    error: str(raw.error) || str(raw.error_msg),
    proxyUrl: str(raw.proxy_url),
    buildId: str(raw.build_id),
    imageId: str(raw.image_id),
    containerId: str(raw.container_id),
    run: num(raw.run),
    revision: num(raw.revision),
    resources: isRecord(raw.resources) ? raw.resources : {},
    alias: str(raw.alias),
    env: stringMap(raw.environment),
    watcherState: str(raw.watcher_state),
    health: str(raw.health, "unknown"),
    healthReason: str(raw.health_reason),
    watcherAnsweredAt: optionalString(raw.watcher_answered_at),
    restartPolicy: isRecord(raw.restart_policy) ? str(raw.restart_policy.mode, "always") : "always",
    stopSignal: isRecord(raw.stop) ? str(raw.stop.signal, "SIGTERM") : "SIGTERM",
    revisionNumber: num(raw.revision_number, 1),
    latestRevisionNumber: num(raw.latest_revision_number, 1),
    rollout: toRollout(raw.rollout),
  };
}

export interface Caller {
  user: string;
  admin: boolean;
}

export async function whoami(): Promise<Caller> {
  const body = await callJson("GET", "/whoami");
  if (!isRecord(body)) throw new ApiError(500, "BAD_ANSWER", "the Host's /whoami answer is not an object");
  return { user: str(body.user_id), admin: body.admin === true };
}

export interface LogEntry {
  time: string;
  stream: string;
  run: number;
  line: string;
}

export function toLogEntry(raw: unknown): LogEntry | null {
  if (!isRecord(raw)) return null;
  if (typeof raw.line !== "string") return null;
  return { time: str(raw.time), stream: str(raw.stream, "stdout"), run: num(raw.run), line: raw.line };
}

// --- streams --------------------------------------------------------------------

/** The lines of a streamed body, as they arrive. */
export async function* lines(response: Response, signal: AbortSignal): AsyncGenerator<string> {
  if (response.body === null) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const cancel = () => void reader.cancel().catch(() => undefined);
  signal.addEventListener("abort", cancel);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        yield buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
      }
    }
    buffer += decoder.decode();
    if (buffer !== "") yield buffer;
  } finally {
    signal.removeEventListener("abort", cancel);
    reader.releaseLock();
  }
}

/**
 * A program's logs, one entry at a time. Asks for NDJSON explicitly, and also
 * reads the original's JSON answer (`{logs: "one string"}`) should the Host
 * give that instead.
 */
export async function* readLogs(
  programId: string,
  params: { streams: string[]; follow: boolean; tail: number },
  signal: AbortSignal,
): AsyncGenerator<LogEntry> {
  const query = new URLSearchParams({ format: "ndjson", tail: String(params.tail) });
  if (params.streams.length > 0) query.set("stream", params.streams.join(","));
  if (params.follow) query.set("follow", "1");
  const response = await call("GET", `/programs/${encodeURIComponent(programId)}/logs?${query}`, {
    headers: { Accept: "application/x-ndjson" },
    signal,
  });
  const type = response.headers.get("Content-Type") ?? "";
  if (type.startsWith("application/json")) {
    const body: unknown = await response.json();
    const text = isRecord(body) && typeof body.logs === "string" ? body.logs : "";
    for (const line of text.split("\n")) if (line !== "") yield { time: "", stream: "stdout", run: 0, line };
    return;
  }
  for await (const line of lines(response, signal)) {
    if (line.trim() === "") continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      continue;
    }
    if (isRecord(parsed) && typeof parsed.error === "string" && typeof parsed.line !== "string") {
      throw new ApiError(num(parsed.code, 500), parsed.error, str(parsed.message, parsed.error));
    }
    const entry = toLogEntry(parsed);
    if (entry !== null) yield entry;
  }
}

export interface SseMessage {
  event: string;
  data: string;
  id: string | null;
}

export type StreamState = "connecting" | "live" | "reconnecting" | "stopped";

/**
 * Server-Sent Events over fetch (EventSource cannot send `Authorization`),
 * reconnecting with `Last-Event-ID` so no change is missed; a resume point
 * the Host forgot (410) starts over with a fresh snapshot.
 */
export class EventStream {
  private lastId: string | null = null;
  private readonly abort = new AbortController();

  constructor(
    private readonly path: string,
    /** `fresh`: a snapshot follows (forget what you knew); else the stream resumes. */
    private readonly onOpen: (fresh: boolean) => void,
    private readonly onMessage: (message: SseMessage) => void,
    private readonly onState: (state: StreamState, detail: string) => void,
  ) {}

  start(): void {
    void this.run();
  }

  stop(): void {
    this.abort.abort();
    this.onState("stopped", "");
  }

  private async run(): Promise<void> {
    let delay = 500;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      this.onState(this.lastId === null ? "connecting" : "reconnecting", "");
      try {
        const headers: Record<string, string> = { Accept: "text/event-stream" };
        if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
        let response: Response;
        try {
          response = await call("GET", this.path, { headers, signal });
        } catch (error) {
          if (error instanceof ApiError && error.status === 410) {
            this.lastId = null;
            continue;
          }
          throw error;
        }
        this.onOpen(this.lastId === null);
        this.onState("live", "");
        delay = 500;
        await this.read(response, signal);
        if (!signal.aborted) this.onState("reconnecting", "the stream ended");
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status === 401) {
          this.onState("stopped", error.message);
          return;
        }
        this.onState("reconnecting", error instanceof Error ? error.message : String(error));
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 10_000);
    }
  }

  private async read(response: Response, signal: AbortSignal): Promise<void> {
    let event = "message";
    let data: string[] = [];
    let id: string | null = null;
    for await (const line of lines(response, signal)) {
      if (line === "") {
        if (data.length > 0) {
          if (id !== null) this.lastId = id;
          this.onMessage({ event, data: data.join("\n"), id });
        }
        event = "message";
        data = [];
        id = null;
        continue;
      }
      if (line.startsWith(":")) continue; // a heartbeat comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
