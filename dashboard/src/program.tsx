// One program: lifecycle buttons (the API's answer shown inline), facts,
// the state timeline from the events, logs (follow, stream filter), source.

import { useEffect, useState } from "preact/hooks";
import {
  callJson,
  isRecord,
  type LogEntry,
  type Program,
  ROLLOUT_UNDER_WAY,
  readLogs,
  type Revision,
  type Secret,
  toProgram,
  toRevisions,
  toSecrets,
} from "./api";
import { type Answer, AnswerNote, age, describeError, Link, localTime, navigate, StateBadge, useNow } from "./common";
import { useStore } from "./store";

const STREAMS = ["build", "stdout", "stderr", "host"] as const;
const LOG_LINES = 2000;

function Facts(props: { program: Program }) {
  const p = props.program;
  const now = useNow();
  const resources = Object.entries(p.resources)
    .map(([key, value]) => `${key}=${String(value)}`)
    .join(", ");
  const rows: [string, string][] = [
    ["Name", p.alias || "—"],
    ["User", p.user],
    ["Watcher state", p.watcherState || "—"],
    ["Health", p.healthReason ? `${p.health}: ${p.healthReason}` : p.health],
    ["Last answer", localTime(p.watcherAnsweredAt)],
    ["Restart policy", p.restartPolicy],
    ["Stop signal", p.stopSignal],
    ["Restarts", String(p.restarts)],
    ["Last exit code", p.lastExitCode === null ? "—" : String(p.lastExitCode)],
    ["Error", p.error || "—"],
    ["Runtime", p.runtime || "—"],
    ["Resources", resources || "—"],
    ["Created", `${localTime(p.createdAt)} (${age(p.createdAt, now)} ago)`],
    ["Ready since", localTime(p.readyAt)],
    ["Next restart", localTime(p.nextRestartAt)],
    ["Run", String(p.run)],
    ["Build", p.buildId || "—"],
    ["Image", p.imageId || "—"],
    ["Container", p.containerId || "—"],
    ["WatcherAPI (proxy)", p.proxyUrl || "—"],
  ];
  return (
    <dl class="facts">
      {rows.map(([name, value]) => (
        <div class={name === "Error" && p.error !== "" ? "fact error-text" : "fact"}>
          <dt>{name}</dt>
          <dd data-fact={name}>{value}</dd>
        </div>
      ))}
    </dl>
  );
}

function Lifecycle(props: { program: Program }) {
  const id = props.program.id;
  const [answer, setAnswer] = useState<Answer>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);

  async function act(action: "start" | "stop" | "restart" | "delete"): Promise<void> {
    setBusy(action);
    setAnswer(null);
    try {
      const path = `/programs/${encodeURIComponent(id)}`;
      const body = action === "delete" ? await callJson("DELETE", path) : await callJson("POST", `${path}/${action}`);
      const program = toProgram(body);
      const said = isRecord(body) && typeof body.message === "string" ? ` ${body.message}` : "";
      setAnswer({ ok: true, text: `${action}: accepted, now ${program?.state ?? "?"}.${said}` });
      if (action === "delete") navigate("/programs");
    } catch (error) {
      setAnswer({ ok: false, text: `${action}: ${describeError(error)}` });
    } finally {
      setBusy(null);
      setConfirming(false);
    }
  }

  return (
    <div class="lifecycle">
      <div class="buttons" role="group" aria-label="Lifecycle">
        {(["start", "stop", "restart"] as const).map((action) => (
          <button type="button" name={action} disabled={busy !== null} onClick={() => void act(action)}>
            {action[0]!.toUpperCase() + action.slice(1)}
          </button>
        ))}
        {confirming ? (
          <>
            <button type="button" name="confirm-delete" class="danger" disabled={busy !== null} onClick={() => void act("delete")}>
              Really delete {id}
            </button>
            <button type="button" name="cancel-delete" onClick={() => setConfirming(false)}>
              Keep it
            </button>
          </>
        ) : (
          <button type="button" name="delete" class="danger" disabled={busy !== null} onClick={() => setConfirming(true)}>
            Delete
          </button>
        )}
      </div>
      <AnswerNote answer={answer} id="lifecycle-answer" />
    </div>
  );
}

function Timeline(props: { id: string }) {
  const store = useStore();
  const entries = store.timelines.get(props.id) ?? [];
  return (
    <ol class="timeline" id="timeline">
      {entries.map((entry) => (
        <li>
          <StateBadge state={entry.state} /> <time>{localTime(entry.at)}</time>
          {entry.revision !== null && <span class="muted"> rev {entry.revision}</span>}
          {entry.error !== "" && <span class="error-text"> {entry.error}</span>}
        </li>
      ))}
    </ol>
  );
}

function Logs(props: { id: string }) {
  const [streams, setStreams] = useState<string[]>([...STREAMS]);
  const [follow, setFollow] = useState(true);
  const [entries, setEntries] = useState<LogEntry[]>([]);
  const [problem, setProblem] = useState("");
  useEffect(() => {
    const abort = new AbortController();
    setEntries([]);
    setProblem("");
    if (streams.length === 0) return () => abort.abort();
    void (async () => {
      try {
        for await (const entry of readLogs(props.id, { streams, follow, tail: LOG_LINES }, abort.signal)) {
          setEntries((list) => [...list, entry].slice(-LOG_LINES));
        }
      } catch (error) {
        if (!abort.signal.aborted) setProblem(describeError(error));
      }
    })();
    return () => abort.abort();
  }, [props.id, streams.join(","), follow]);
  return (
    <section aria-labelledby="logs-title">
      <h2 id="logs-title">Logs</h2>
      <fieldset class="log-options">
        <legend>Show</legend>
        {STREAMS.map((stream) => (
          <label class="inline">
            <input
              type="checkbox"
              name={`stream-${stream}`}
              checked={streams.includes(stream)}
              onChange={(event) => {
                const on = event.currentTarget.checked;
                setStreams((list) => STREAMS.filter((s) => (s === stream ? on : list.includes(s))));
              }}
            />
            {stream}
          </label>
        ))}
        <label class="inline">
          <input type="checkbox" name="follow" checked={follow} onChange={(event) => setFollow(event.currentTarget.checked)} />
          follow
        </label>
      </fieldset>
      {problem !== "" && <p class="answer failed" role="alert">{problem}</p>}
      <pre class="log" id="program-log" tabIndex={0} aria-label="Log lines">
        {entries.map((entry) => (
          <span class={`line stream-${entry.stream}`}>{`${entry.time.slice(11, 23)} [${entry.stream}] ${entry.line}\n`}</span>
        ))}
      </pre>
    </section>
  );
}

// A program's name, environment variables and secrets. Secrets are write-only: the
// value goes from the password field to the API and is never shown or kept.
function Configuration(props: { program: Program }) {
  const p = props.program;
  const path = `/programs/${encodeURIComponent(p.id)}`;
  const [answer, setAnswer] = useState<Answer>(null);
  const [secrets, setSecrets] = useState<Secret[]>([]);
  const [alias, setAlias] = useState(p.alias);
  const [envName, setEnvName] = useState("");
  const [envValue, setEnvValue] = useState("");
  const [secretName, setSecretName] = useState("");
  const [secretValue, setSecretValue] = useState("");

  async function loadSecrets(): Promise<void> {
    try {
      setSecrets(toSecrets(await callJson("GET", `${path}/secrets`)));
    } catch (error) {
      setAnswer({ ok: false, text: `secrets: ${describeError(error)}` });
    }
  }
  useEffect(() => {
    void loadSecrets();
  }, [p.id]);

  async function run(what: string, work: () => Promise<string>): Promise<void> {
    setAnswer(null);
    try {
      setAnswer({ ok: true, text: `${what}: ${await work()}` });
    } catch (error) {
      setAnswer({ ok: false, text: `${what}: ${describeError(error)}` });
    }
  }
  const restartNote = " A restart hands it over.";

  return (
    <section aria-labelledby="config-title">
      <h2 id="config-title">Configuration</h2>
      <form
        class="inline-form"
        name="rename"
        onSubmit={(event) => {
          event.preventDefault();
          void run("rename", async () => {
            const program = toProgram(await callJson("POST", `${path}/rename`, { alias }));
            return program?.alias ? `now named ${program.alias}.` : "no name any more.";
          });
        }}
      >
        <label>
          Name
          <input name="alias" value={alias} placeholder="bot" onInput={(event) => setAlias(event.currentTarget.value)} />
        </label>
        <button type="submit">Rename</button>
      </form>
      <h3>Environment</h3>
      <dl class="facts" id="program-env">
        {Object.entries(p.env).map(([name, value]) => (
          <div class="fact">
            <dt>{name}</dt>
            <dd>
              {value}{" "}
              <button
                type="button"
                name={`unset-${name}`}
                onClick={() => void run(`unset ${name}`, async () => {
                  await callJson("POST", `${path}/env`, { unset: [name] });
                  return `removed.${restartNote}`;
                })}
              >
                Remove
              </button>
            </dd>
          </div>
        ))}
      </dl>
      <form
        class="inline-form"
        name="set-env"
        onSubmit={(event) => {
          event.preventDefault();
          void run(`set ${envName}`, async () => {
            await callJson("POST", `${path}/env`, { set: { [envName]: envValue } });
            setEnvName("");
            setEnvValue("");
            return `set.${restartNote}`;
          });
        }}
      >
        <label>
          Variable
          <input name="env-name" value={envName} placeholder="MODE" onInput={(event) => setEnvName(event.currentTarget.value)} />
        </label>
        <label>
          Value
          <input name="env-value" value={envValue} onInput={(event) => setEnvValue(event.currentTarget.value)} />
        </label>
        <button type="submit">Set</button>
      </form>
      <h3>Secrets</h3>
      <p class="muted">Write-only: the program reads each at /run/secrets/NAME from its next start; nobody can read one back.</p>
      <ul id="program-secrets">
        {secrets.map((secret) => (
          <li>
            <code>{secret.name}</code> v{secret.version} <span class="muted">{localTime(secret.updatedAt)}</span>{" "}
            <button
              type="button"
              name={`delete-secret-${secret.name}`}
              onClick={() => void run(`delete ${secret.name}`, async () => {
                await callJson("DELETE", `${path}/secrets/${encodeURIComponent(secret.name)}`);
                await loadSecrets();
                return `removed.${restartNote}`;
              })}
            >
              Delete
            </button>
          </li>
        ))}
      </ul>
      <form
        class="inline-form"
        name="set-secret"
        onSubmit={(event) => {
          event.preventDefault();
          const name = secretName;
          const value = secretValue;
          setSecretValue(""); // never kept in the page longer than the call
          void run(`secret ${name}`, async () => {
            const body = await callJson("PUT", `${path}/secrets/${encodeURIComponent(name)}`, { value });
            await loadSecrets();
            const version = isRecord(body) && typeof body.version === "number" ? body.version : "?";
            return `version ${version} set.${restartNote}`;
          });
        }}
      >
        <label>
          Secret
          <input name="secret-name" value={secretName} placeholder="API_KEY" onInput={(event) => setSecretName(event.currentTarget.value)} />
        </label>
        <label>
          Value
          <input
            name="secret-value"
            type="password"
            autocomplete="off"
            value={secretValue}
            onInput={(event) => setSecretValue(event.currentTarget.value)}
          />
        </label>
        <button type="submit">Set secret</button>
      </form>
      <AnswerNote answer={answer} id="config-answer" />
    </section>
  );
}

// The revisions (newest first), the latest rollout live from the event stream, and a
// rollback to a kept revision (asked twice: it restarts the program).
function Revisions(props: { program: Program }) {
  const p = props.program;
  const path = `/programs/${encodeURIComponent(p.id)}`;
  const now = useNow();
  const [revisions, setRevisions] = useState<Revision[]>([]);
  const [problem, setProblem] = useState("");
  const [answer, setAnswer] = useState<Answer>(null);
  const [confirming, setConfirming] = useState<number | null>(null);
  const [busy, setBusy] = useState(false);
  const rollout = p.rollout;
  const phase = rollout?.phase ?? "";
  // The stream says when something changed: read the list again then.
  useEffect(() => {
    const abort = new AbortController();
    callJson("GET", `${path}/revisions`)
      .then((body) => {
        if (abort.signal.aborted) return;
        setRevisions(toRevisions(body));
        setProblem("");
      })
      .catch((error: unknown) => {
        if (!abort.signal.aborted) setProblem(describeError(error));
      });
    return () => abort.abort();
  }, [p.id, p.revisionNumber, p.latestRevisionNumber, phase]);

  async function rollback(number: number): Promise<void> {
    setBusy(true);
    setAnswer(null);
    try {
      const body = await callJson("POST", `${path}/rollback?revision=${number}`);
      const program = toProgram(body);
      setAnswer({ ok: true, text: `rollback to revision ${number}: rolling out revision ${program?.latestRevisionNumber ?? "?"}.` });
    } catch (error) {
      setAnswer({ ok: false, text: `rollback to revision ${number}: ${describeError(error)}` });
    } finally {
      setBusy(false);
      setConfirming(null);
    }
  }

  const underWay = rollout !== null && ROLLOUT_UNDER_WAY.includes(rollout.phase);
  return (
    <section aria-labelledby="revisions-title">
      <h2 id="revisions-title">Revisions</h2>
      {rollout === null ? (
        <p class="muted" id="rollout">
          Revision {p.revisionNumber}; never redeployed.
        </p>
      ) : (
        <p id="rollout" class={underWay ? "rollout under-way" : `rollout phase-${rollout.phase.toLowerCase()}`} role="status">
          Rollout revision {rollout.previous} → {rollout.target}: <strong data-phase={rollout.phase}>{rollout.phase}</strong>; runs revision{" "}
          {p.revisionNumber}
          {rollout.reason !== "" && <span class={rollout.phase === "SUCCEEDED" ? "muted" : "error-text"}>: {rollout.reason}</span>}
        </p>
      )}
      {problem !== "" && <p class="answer failed" role="alert">{problem}</p>}
      <div class="table-wrap">
      <table class="revisions" id="revisions">
        <thead>
          <tr>
            <th>Rev</th>
            <th>Build</th>
            <th>When</th>
            <th>Who</th>
            <th>What</th>
            <th>Changed</th>
            <th></th>
          </tr>
        </thead>
        <tbody>
          {revisions.map((revision) => (
            <tr data-revision={revision.number} class={revision.current ? "current" : ""}>
              <td>
                {revision.number}
                {revision.current && <span class="badge current-mark"> current</span>}
              </td>
              <td>
                <code>{revision.buildId.slice(0, 14)}</code>
              </td>
              <td title={localTime(revision.createdAt)}>{age(revision.createdAt, now)} ago</td>
              <td>{revision.createdBy}</td>
              <td>{revision.description}</td>
              <td>{revision.number === 1 ? "—" : revision.changedFields.map((f) => (f === "build_id" ? "source" : f)).join(", ") || "nothing"}</td>
              <td>
                {revision.current ? null : !revision.kept ? (
                  <span class="muted">not kept</span>
                ) : confirming === revision.number ? (
                  <>
                    <button type="button" name={`confirm-rollback-${revision.number}`} class="danger" disabled={busy} onClick={() => void rollback(revision.number)}>
                      Really roll back to {revision.number}
                    </button>
                    <button type="button" name="cancel-rollback" onClick={() => setConfirming(null)}>
                      Keep
                    </button>
                  </>
                ) : (
                  <button type="button" name={`rollback-${revision.number}`} disabled={busy || underWay} onClick={() => setConfirming(revision.number)}>
                    Roll back
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      </div>
      <AnswerNote answer={answer} id="rollback-answer" />
    </section>
  );
}

interface Source {
  dockerfile: string;
  files: [string, string][];
}

function toSource(body: unknown): Source {
  const source: Source = { dockerfile: "", files: [] };
  if (!isRecord(body)) return source;
  if (typeof body.dockerfile === "string") source.dockerfile = body.dockerfile;
  const text = isRecord(body.src_files) ? body.src_files : isRecord(body.files) ? body.files : {};
  for (const [name, content] of Object.entries(text)) {
    if (name !== "Dockerfile" && typeof content === "string") source.files.push([name, content]);
  }
  if (isRecord(body.src_files_base64)) {
    for (const [name, content] of Object.entries(body.src_files_base64)) {
      const size = typeof content === "string" ? Math.floor((content.length * 3) / 4) : 0;
      source.files.push([name, `(not text: about ${size} bytes)`]);
    }
  }
  source.files.sort(([a], [b]) => a.localeCompare(b));
  return source;
}

function SourceViewer(props: { id: string }) {
  const [source, setSource] = useState<Source | null>(null);
  const [chosen, setChosen] = useState("Dockerfile");
  const [problem, setProblem] = useState("");
  useEffect(() => {
    callJson("GET", `/programs/${encodeURIComponent(props.id)}/source`)
      .then((body) => setSource(toSource(body)))
      .catch((error: unknown) => setProblem(describeError(error)));
  }, [props.id]);
  if (problem !== "") return <p class="answer failed" role="alert">{problem}</p>;
  if (source === null) return <p class="muted">Loading the source…</p>;
  const names = ["Dockerfile", ...source.files.map(([name]) => name)];
  const content = chosen === "Dockerfile" ? source.dockerfile : (source.files.find(([name]) => name === chosen)?.[1] ?? "");
  return (
    <div class="source">
      <label>
        File
        <select name="source-file" value={chosen} onChange={(event) => setChosen(event.currentTarget.value)}>
          {names.map((name) => (
            <option value={name}>{name}</option>
          ))}
        </select>
      </label>
      <pre class="code" id="source-content" tabIndex={0} aria-label={`Content of ${chosen}`}>
        {content}
      </pre>
    </div>
  );
}

export function ProgramPage(props: { id: string }) {
  const store = useStore();
  const program = store.programs.get(props.id);
  if (program === undefined) {
    if (store.deleted.has(props.id)) return <p>Program {props.id} was deleted. <Link to="/programs">All programs</Link></p>;
    if (!store.synced) return <p class="muted">Loading {props.id}…</p>;
    return (
      <p role="alert">
        No program {props.id} (or it is not yours). <Link to="/programs">All programs</Link>
      </p>
    );
  }
  return (
    <article aria-labelledby="program-title">
      <p class="crumbs">
        <Link to="/programs">Programs</Link> / {program.id}
      </p>
      <div class="title-row">
        <h1 id="program-title">
          {program.id} <StateBadge state={program.state} />
        </h1>
        <Link to={`/programs/${program.id}/watcher`} class="button">
          WatcherAPI
        </Link>
      </div>
      <Lifecycle program={program} />
      <div class="columns">
        <section aria-labelledby="facts-title">
          <h2 id="facts-title">Details</h2>
          <Facts program={program} />
        </section>
        <section aria-labelledby="timeline-title">
          <h2 id="timeline-title">Timeline</h2>
          <p class="muted">State changes seen since this page opened; the Host's notes in the log go further back.</p>
          <Timeline id={program.id} />
        </section>
      </div>
      <Revisions program={program} />
      <Configuration program={program} />
      <Logs id={program.id} />
      <section aria-labelledby="source-title">
        <h2 id="source-title">Source</h2>
        <SourceViewer id={program.id} />
      </section>
    </article>
  );
}
