// Deploy: a folder, a tar, or a pasted Dockerfile and files; then start it,
// show the build log live, and land on the program's page once it settles.

import { useEffect, useRef, useState } from "preact/hooks";
import { call, callJson, type Caller, type LogEntry, readLogs, toProgram } from "./api";
import { type Answer, AnswerNote, describeError, navigate, StateBadge } from "./common";
import { useStore } from "./store";

type Mode = "paste" | "folder" | "tar";
interface PastedFile {
  name: string;
  content: string;
}
interface Body {
  user_id: string;
  dockerfile: string;
  src_files: Record<string, string>;
  src_files_base64: Record<string, string>;
}

const SETTLED = new Set(["Ready", "Error", "Stopped", "Backoff"]);
const utf8 = new TextDecoder("utf-8", { fatal: true });

function base64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** A picked folder as a create body: its top folder stripped, text as text, the rest base64. */
async function folderBody(user: string, files: FileList): Promise<Body> {
  const body: Body = { user_id: user, dockerfile: "", src_files: {}, src_files_base64: {} };
  for (const file of Array.from(files)) {
    const relative = (file.webkitRelativePath || file.name).split("/").slice(1).join("/") || file.name;
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (relative === "Dockerfile") {
      body.dockerfile = utf8.decode(bytes);
      continue;
    }
    try {
      body.src_files[relative] = utf8.decode(bytes);
    } catch {
      body.src_files_base64[relative] = base64(bytes);
    }
  }
  if (body.dockerfile === "") throw new Error("the folder has no Dockerfile at its top");
  return body;
}

export function DeployPage(props: { caller: Caller }) {
  const store = useStore();
  const [mode, setMode] = useState<Mode>("paste");
  const [user, setUser] = useState(props.caller.admin ? "" : props.caller.user);
  const [dockerfile, setDockerfile] = useState('FROM scratch\nCOPY . /app\nCMD ["/app/run"]\n');
  const [files, setFiles] = useState<PastedFile[]>([{ name: "run", content: "" }]);
  const folder = useRef<HTMLInputElement>(null);
  const tar = useRef<HTMLInputElement>(null);
  const [answer, setAnswer] = useState<Answer>(null);
  const [busy, setBusy] = useState(false);
  const [programId, setProgramId] = useState<string | null>(null);
  const [log, setLog] = useState<LogEntry[]>([]);

  const program = programId === null ? undefined : store.programs.get(programId);
  useEffect(() => {
    if (programId !== null && program !== undefined && SETTLED.has(program.state)) {
      navigate(`/programs/${programId}`);
    }
  }, [programId, program?.state]);

  // The build log, live, while the program is being built and started.
  useEffect(() => {
    if (programId === null) return undefined;
    const abort = new AbortController();
    void (async () => {
      try {
        const options = { streams: ["build", "host"], follow: true, tail: 1000 };
        for await (const entry of readLogs(programId, options, abort.signal)) {
          setLog((lines) => [...lines, entry].slice(-2000));
        }
      } catch (error) {
        if (!abort.signal.aborted) setAnswer({ ok: false, text: `build log: ${describeError(error)}` });
      }
    })();
    return () => abort.abort();
  }, [programId]);

  async function deploy(event: Event): Promise<void> {
    event.preventDefault();
    setBusy(true);
    setAnswer(null);
    try {
      let created: unknown;
      if (mode === "tar") {
        const file = tar.current?.files?.[0];
        if (file === undefined) throw new Error("choose a tar file first");
        const response = await call("POST", `/programs?user_id=${encodeURIComponent(user)}`, {
          body: file,
          headers: { "Content-Type": "application/x-tar" },
        });
        created = await response.json();
      } else {
        let body: Body;
        if (mode === "folder") {
          const picked = folder.current?.files;
          if (picked === null || picked === undefined || picked.length === 0) throw new Error("choose a folder first");
          body = await folderBody(user, picked);
        } else {
          body = { user_id: user, dockerfile, src_files: {}, src_files_base64: {} };
          for (const file of files) if (file.name.trim() !== "") body.src_files[file.name.trim()] = file.content;
        }
        created = await callJson("POST", "/programs", body);
      }
      const program = toProgram(created);
      if (program === null) throw new Error("the Host's answer has no program_id");
      setAnswer({ ok: true, text: `Created ${program.id}; starting…` });
      setLog([]);
      setProgramId(program.id);
      await callJson("POST", `/programs/${encodeURIComponent(program.id)}/start`);
    } catch (error) {
      setAnswer({ ok: false, text: describeError(error) });
    } finally {
      setBusy(false);
    }
  }

  return (
    <section aria-labelledby="deploy-title">
      <h1 id="deploy-title">Deploy a program</h1>
      <form class="deploy" onSubmit={(event) => void deploy(event)}>
        <label>
          User
          <input
            name="user_id"
            required
            value={user}
            readOnly={!props.caller.admin}
            pattern="[a-z0-9][a-z0-9_\-]{0,62}"
            onInput={(event) => setUser(event.currentTarget.value)}
          />
        </label>
        <fieldset>
          <legend>Source</legend>
          {(
            [
              ["paste", "Paste a Dockerfile and files"],
              ["folder", "Upload a folder"],
              ["tar", "Upload a tar"],
            ] as const
          ).map(([value, label]) => (
            <label class="inline">
              <input type="radio" name="mode" value={value} checked={mode === value} onChange={() => setMode(value)} />
              {label}
            </label>
          ))}
        </fieldset>
        {mode === "paste" && (
          <div class="paste">
            <label>
              Dockerfile
              <textarea name="dockerfile" rows={5} spellcheck={false} value={dockerfile} onInput={(event) => setDockerfile(event.currentTarget.value)} />
            </label>
            {files.map((file, index) => (
              <fieldset class="file">
                <legend>File {index + 1}</legend>
                <label>
                  Path
                  <input
                    name={`file-name-${index}`}
                    value={file.name}
                    onInput={(event) => {
                      const name = event.currentTarget.value;
                      setFiles((list) => list.map((f, i) => (i === index ? { ...f, name } : f)));
                    }}
                  />
                </label>
                <label>
                  Content
                  <textarea
                    name={`file-content-${index}`}
                    rows={4}
                    spellcheck={false}
                    value={file.content}
                    onInput={(event) => {
                      const content = event.currentTarget.value;
                      setFiles((list) => list.map((f, i) => (i === index ? { ...f, content } : f)));
                    }}
                  />
                </label>
                <button type="button" onClick={() => setFiles((list) => list.filter((_, i) => i !== index))}>
                  Remove file {index + 1}
                </button>
              </fieldset>
            ))}
            <button type="button" onClick={() => setFiles((list) => [...list, { name: "", content: "" }])}>
              Add a file
            </button>
          </div>
        )}
        {mode === "folder" && (
          <label>
            Folder (with its Dockerfile at the top)
            <input ref={folder} type="file" name="folder" {...{ webkitdirectory: "", directory: "" }} multiple />
          </label>
        )}
        {mode === "tar" && (
          <label>
            Tar file (the build context, Dockerfile at its top)
            <input ref={tar} type="file" name="tar" accept=".tar,application/x-tar" />
          </label>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? "Deploying…" : "Deploy"}
        </button>
      </form>
      <AnswerNote answer={answer} id="deploy-answer" />
      {programId !== null && (
        <section aria-labelledby="build-title">
          <h2 id="build-title">
            Build of {programId} {program !== undefined && <StateBadge state={program.state} />}
          </h2>
          <pre class="log" id="build-log" aria-live="polite">
            {log.map((entry) => `[${entry.stream}] ${entry.line}\n`).join("")}
          </pre>
        </section>
      )}
    </section>
  );
}
