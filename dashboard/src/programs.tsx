// The programs list: live from the event stream, filtered and searched here.

import { useState } from "preact/hooks";
import type { Caller } from "./api";
import { age, Link, StateBadge, useNow } from "./common";
import { useStore } from "./store";

const STATES = ["Created", "Building", "Starting", "Ready", "Stopping", "Stopped", "Backoff", "Error", "Deleting"];

export function ProgramsPage(props: { caller: Caller }) {
  const store = useStore();
  const now = useNow();
  const [search, setSearch] = useState("");
  const [state, setState] = useState("");
  const [user, setUser] = useState("");
  const all = [...store.programs.values()];
  const users = [...new Set(all.map((program) => program.user))].sort();
  const needle = search.trim().toLowerCase();
  const shown = all
    .filter((program) => state === "" || program.state === state)
    .filter((program) => user === "" || program.user === user)
    .filter(
      (program) =>
        needle === "" ||
        [program.id, program.user, program.state, program.runtime, program.error].some((text) =>
          text.toLowerCase().includes(needle),
        ),
    )
    .sort((a, b) => (a.createdAt ?? "").localeCompare(b.createdAt ?? ""));
  return (
    <section aria-labelledby="programs-title">
      <div class="title-row">
        <h1 id="programs-title">Programs</h1>
        <Link to="/deploy" class="button primary">
          Deploy a program
        </Link>
      </div>
      <form class="filters" role="search" onSubmit={(event) => event.preventDefault()}>
        <label>
          Search
          <input
            type="search"
            name="search"
            value={search}
            placeholder="id, user, state, runtime, error"
            onInput={(event) => setSearch(event.currentTarget.value)}
          />
        </label>
        <label>
          State
          <select name="state" value={state} onChange={(event) => setState(event.currentTarget.value)}>
            <option value="">any</option>
            {STATES.map((name) => (
              <option value={name}>{name}</option>
            ))}
          </select>
        </label>
        {props.caller.admin && (
          <label>
            User
            <select name="user" value={user} onChange={(event) => setUser(event.currentTarget.value)}>
              <option value="">everyone</option>
              {users.map((name) => (
                <option value={name}>{name}</option>
              ))}
            </select>
          </label>
        )}
      </form>
      <p class="muted" aria-live="polite" id="program-count">
        {store.synced ? `${shown.length} of ${all.length} programs` : "Loading programs…"}
      </p>
      <div class="table-wrap">
        <table class="programs">
          <thead>
            <tr>
              <th scope="col">Program</th>
              <th scope="col">User</th>
              <th scope="col">State</th>
              <th scope="col">Health</th>
              <th scope="col">Restarts</th>
              <th scope="col">Age</th>
              <th scope="col">Runtime</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((program) => (
              <tr data-program-id={program.id} key={program.id}>
                <th scope="row" data-label="Program">
                  <Link to={`/programs/${program.id}`}>{program.id}</Link>
                </th>
                <td data-label="User">{program.user}</td>
                <td data-label="State">
                  <StateBadge state={program.state} />
                  {program.error !== "" && <span class="error-text"> {program.error}</span>}
                </td>
                <td data-label="Health" data-health={program.health}>
                  {program.health === "unknown" ? "—" : program.health}
                  {program.watcherState !== "" && <span class="muted"> ({program.watcherState})</span>}
                </td>
                <td data-label="Restarts">{program.restarts}</td>
                <td data-label="Age">{age(program.createdAt, now)}</td>
                <td data-label="Runtime">{program.runtime || "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {store.synced && all.length === 0 && (
        <p class="empty">
          No programs yet. <Link to="/deploy">Deploy one</Link>.
        </p>
      )}
    </section>
  );
}
