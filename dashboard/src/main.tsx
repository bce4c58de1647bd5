// The dashboard's shell: sign-in, navigation, the live connection, the pages.

import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { authEnabled, type Caller, storedToken, storeToken, UNAUTHENTICATED, whoami } from "./api";
import { BASE, describeError, Link, navigate } from "./common";
import { DeployPage } from "./deploy";
import { ProgramPage } from "./program";
import { ProgramsPage } from "./programs";
import { store, useStore } from "./store";
import { TokensPage } from "./tokens";
import { WatcherPage } from "./watcher";

function usePath(): string {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const changed = () => setPath(location.pathname);
    window.addEventListener("popstate", changed);
    window.addEventListener("hershy:navigate", changed);
    return () => {
      window.removeEventListener("popstate", changed);
      window.removeEventListener("hershy:navigate", changed);
    };
  }, []);
  return path;
}

function SignIn(props: { onSignedIn: (caller: Caller) => void; problem: string }) {
  const [token, setToken] = useState("");
  const [problem, setProblem] = useState(props.problem);
  async function submit(event: Event): Promise<void> {
    event.preventDefault();
    storeToken(token.trim());
    try {
      props.onSignedIn(await whoami());
    } catch (error) {
      storeToken(null);
      setProblem(describeError(error));
    }
  }
  return (
    <main id="main" class="signin">
      <h1>Sign in to Hershy</h1>
      <form onSubmit={(event) => void submit(event)}>
        <label>
          API token
          <input
            type="password"
            name="token"
            autoComplete="off"
            required
            value={token}
            placeholder="hershy_…"
            onInput={(event) => setToken(event.currentTarget.value)}
          />
        </label>
        <p class="muted">Kept in this tab only (sessionStorage) and sent only as the Authorization header.</p>
        <button type="submit" class="primary">
          Sign in
        </button>
      </form>
      {problem !== "" && (
        <p class="answer failed" role="alert">
          {problem}
        </p>
      )}
    </main>
  );
}

function Connection() {
  const { state, detail } = useStore();
  const text = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", stopped: "offline" }[state];
  return (
    <span class={`connection connection-${state}`} id="connection" role="status" title={detail}>
      <span aria-hidden="true" class="dot" /> Events: {text}
    </span>
  );
}

function Page(props: { path: string; caller: Caller }) {
  const rest = props.path.startsWith(BASE) ? props.path.slice(BASE.length) : props.path;
  const parts = rest.split("/").filter((part) => part !== "");
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "programs")) return <ProgramsPage caller={props.caller} />;
  if (parts[0] === "deploy" && parts.length === 1) return <DeployPage caller={props.caller} />;
  if (parts[0] === "tokens" && parts.length === 1) {
    return props.caller.admin ? <TokensPage /> : <p role="alert">Only the admin manages tokens.</p>;
  }
  if (parts[0] === "programs" && parts.length === 2) return <ProgramPage id={parts[1]!} />;
  if (parts[0] === "programs" && parts.length === 3 && parts[2] === "watcher") return <WatcherPage id={parts[1]!} />;
  return (
    <p role="alert">
      No such page. <Link to="/programs">All programs</Link>
    </p>
  );
}

function App() {
  const path = usePath();
  const [caller, setCaller] = useState<Caller | null>(null);
  const [checking, setChecking] = useState(!authEnabled || storedToken() !== null);
  const [problem, setProblem] = useState("");

  useEffect(() => {
    if (!checking) return;
    whoami()
      .then(setCaller)
      .catch((error: unknown) => {
        storeToken(null);
        setProblem(describeError(error));
      })
      .finally(() => setChecking(false));
  }, []);

  useEffect(() => {
    const signOut = () => {
      storeToken(null);
      setCaller(null);
      setProblem("The Host did not accept the token (revoked?): sign in again.");
    };
    window.addEventListener(UNAUTHENTICATED, signOut);
    return () => window.removeEventListener(UNAUTHENTICATED, signOut);
  }, []);

  useEffect(() => {
    if (caller === null) return undefined;
    store.start();
    return () => store.stop();
  }, [caller]);

  useEffect(() => {
    const title = path.replace(BASE, "").split("/").filter(Boolean).join(" / ");
    document.title = title === "" ? "Hershy" : `${title} · Hershy`;
  }, [path]);

  if (checking) return <p class="boot">Checking who you are…</p>;
  if (caller === null) return <SignIn onSignedIn={setCaller} problem={problem} />;
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <Link to="/programs" class="brand">
          Hershy
        </Link>
        <nav aria-label="Main">
          <Link to="/programs">Programs</Link>
          <Link to="/deploy">Deploy</Link>
          {caller.admin && <Link to="/tokens">Tokens</Link>}
        </nav>
        <Connection />
        <span class="who" id="who">
          {caller.user}
          {caller.admin ? " (admin)" : ""}
        </span>
        {authEnabled && (
          <button
            type="button"
            name="sign-out"
            onClick={() => {
              storeToken(null);
              setCaller(null);
              setProblem("");
              navigate("/programs");
            }}
          >
            Sign out
          </button>
        )}
      </header>
      <main id="main" tabIndex={-1}>
        <Page path={path} caller={caller} />
      </main>
    </>
  );
}

const root = document.getElementById("app");
if (root !== null) {
  root.textContent = "";
  render(<App />, root);
}
