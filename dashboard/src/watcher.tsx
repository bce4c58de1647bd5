// A program's WatcherAPI through the Host's proxy. Everything the program
// answers is untrusted: it is shown as text (Preact text nodes), never as HTML.
// The WatcherAPI has no stream, so its views are polled, and only while this
// tab is visible.

import { useEffect, useState } from "preact/hooks";
import { call, isRecord } from "./api";
import { type Answer, AnswerNote, describeError, Link, localTime, pretty, StateBadge } from "./common";
import { useStore } from "./store";

const POLL_MS = 3000;
const VIEWS = [
  ["status", "Status"],
  ["varState", "Variables"],
  ["signals", "Signals"],
  ["memoCache", "Memo cache"],
  ["config", "Config"],
  ["logs?type=all&limit=100", "The program's logs"],
] as const;

interface View {
  text: string;
  at: number;
  failed: boolean;
}

/** The answer's body as text: pretty JSON when it is JSON, else exactly as sent. */
async function bodyText(response: Response): Promise<string> {
  const text = await response.text();
  try {
    return pretty(JSON.parse(text));
  } catch {
    return text;
  }
}

function useVisible(): boolean {
  const [visible, setVisible] = useState(document.visibilityState === "visible");
  useEffect(() => {
    const changed = () => setVisible(document.visibilityState === "visible");
    document.addEventListener("visibilitychange", changed);
    return () => document.removeEventListener("visibilitychange", changed);
  }, []);
  return visible;
}

function MessageBox(props: { base: string }) {
  const [content, setContent] = useState("");
  const [answer, setAnswer] = useState<Answer>(null);
  const [reply, setReply] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  async function send(event: Event): Promise<void> {
    event.preventDefault();
    setBusy(true);
    setAnswer(null);
    setReply(null);
    try {
      const response = await call("POST", `${props.base}/message`, {
        body: JSON.stringify({ content }),
        headers: { "Content-Type": "application/json" },
      });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // the program answered something that is not JSON: show it as it is
      }
      const said = isRecord(parsed) && "reply" in parsed ? parsed.reply : parsed;
      setReply(pretty(said));
      setAnswer({ ok: true, text: `sent; the program answered ${response.status}` });
    } catch (error) {
      setAnswer({ ok: false, text: describeError(error) });
    } finally {
      setBusy(false);
    }
  }
  return (
    <section aria-labelledby="message-title">
      <h2 id="message-title">Send a message</h2>
      <form class="message" onSubmit={(event) => void send(event)}>
        <label>
          Message
          <input name="message" required value={content} onInput={(event) => setContent(event.currentTarget.value)} />
        </label>
        <button type="submit" class="primary" disabled={busy}>
          Send
        </button>
      </form>
      <AnswerNote answer={answer} id="message-answer" />
      {reply !== null && (
        <>
          <h3>Reply</h3>
          <pre class="code" id="message-reply">
            {reply}
          </pre>
        </>
      )}
    </section>
  );
}

export function WatcherPage(props: { id: string }) {
  const store = useStore();
  const program = store.programs.get(props.id);
  const visible = useVisible();
  const [views, setViews] = useState<Record<string, View>>({});
  const ready = program?.state === "Ready";
  const base = `/programs/${encodeURIComponent(props.id)}/watcher`;

  useEffect(() => {
    if (!ready || !visible) return undefined;
    const abort = new AbortController();
    const poll = async () => {
      await Promise.all(
        VIEWS.map(async ([path]) => {
          let view: View;
          try {
            const response = await call("GET", `${base}/${path}`, { signal: abort.signal });
            view = { text: await bodyText(response), at: Date.now(), failed: false };
          } catch (error) {
            if (abort.signal.aborted) return;
            view = { text: describeError(error), at: Date.now(), failed: true };
          }
          setViews((all) => ({ ...all, [path]: view }));
        }),
      );
    };
    void poll();
    const timer = setInterval(() => void poll(), POLL_MS);
    return () => {
      clearInterval(timer);
      abort.abort();
    };
  }, [props.id, ready, visible]);

  return (
    <article aria-labelledby="watcher-title">
      <p class="crumbs">
        <Link to="/programs">Programs</Link> / <Link to={`/programs/${props.id}`}>{props.id}</Link> / WatcherAPI
      </p>
      <h1 id="watcher-title">
        WatcherAPI of {props.id} {program !== undefined && <StateBadge state={program.state} />}
      </h1>
      <p class="muted" id="poll-state" aria-live="polite">
        {!ready
          ? "The program is not Ready: its WatcherAPI is not polled."
          : visible
            ? `Polled every ${POLL_MS / 1000} s while this tab is visible.`
            : "Paused while this tab is hidden."}
      </p>
      {ready && <MessageBox base={base} />}
      <div class="views">
        {VIEWS.map(([path, title]) => {
          const view = views[path];
          const id = `view-${path.split("?")[0]}`;
          return (
            <section aria-labelledby={`${id}-title`}>
              <h2 id={`${id}-title`}>{title}</h2>
              {view === undefined ? (
                <p class="muted">Not read yet.</p>
              ) : (
                <>
                  <p class="muted">{`read ${localTime(new Date(view.at).toISOString())}`}</p>
                  <pre class={view.failed ? "code failed" : "code"} id={id} tabIndex={0}>
                    {view.text}
                  </pre>
                </>
              )}
            </section>
          );
        })}
      </div>
    </article>
  );
}
