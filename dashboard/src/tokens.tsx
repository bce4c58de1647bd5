// Token management, the admin's: list, create (the secret shown once), revoke.

import { useEffect, useState } from "preact/hooks";
import { callJson, isRecord } from "./api";
import { type Answer, AnswerNote, describeError, localTime } from "./common";

interface Token {
  id: string;
  user: string;
  admin: boolean;
  createdAt: string | null;
  revokedAt: string | null;
}

function toTokens(body: unknown): Token[] {
  const list = isRecord(body) && Array.isArray(body.tokens) ? body.tokens : [];
  return list.filter(isRecord).map((raw) => ({
    id: typeof raw.token_id === "string" ? raw.token_id : "",
    user: typeof raw.user_id === "string" ? raw.user_id : "",
    admin: raw.admin === true,
    createdAt: typeof raw.created_at === "string" ? raw.created_at : null,
    revokedAt: typeof raw.revoked_at === "string" ? raw.revoked_at : null,
  }));
}

export function TokensPage() {
  const [tokens, setTokens] = useState<Token[]>([]);
  const [user, setUser] = useState("");
  const [secret, setSecret] = useState<string | null>(null);
  const [answer, setAnswer] = useState<Answer>(null);
  const load = () =>
    callJson("GET", "/tokens")
      .then((body) => setTokens(toTokens(body)))
      .catch((error: unknown) => setAnswer({ ok: false, text: describeError(error) }));
  useEffect(() => void load(), []);

  async function create(event: Event): Promise<void> {
    event.preventDefault();
    setSecret(null);
    try {
      const body = await callJson("POST", "/tokens", { user_id: user.trim() });
      if (isRecord(body) && typeof body.secret === "string") setSecret(body.secret);
      setAnswer({ ok: true, text: `token made for ${user.trim()}: copy its secret now, it is shown once` });
      setUser("");
      await load();
    } catch (error) {
      setAnswer({ ok: false, text: describeError(error) });
    }
  }

  async function revoke(id: string): Promise<void> {
    try {
      await callJson("DELETE", `/tokens/${encodeURIComponent(id)}`);
      setAnswer({ ok: true, text: `revoked ${id}` });
      await load();
    } catch (error) {
      setAnswer({ ok: false, text: describeError(error) });
    }
  }

  return (
    <section aria-labelledby="tokens-title">
      <h1 id="tokens-title">Tokens</h1>
      <form class="inline-form" onSubmit={(event) => void create(event)}>
        <label>
          New token for user
          <input name="token-user" required pattern="[a-z0-9][a-z0-9_\-]{0,62}" value={user} onInput={(event) => setUser(event.currentTarget.value)} />
        </label>
        <button type="submit" class="primary">
          Create token
        </button>
      </form>
      <AnswerNote answer={answer} id="tokens-answer" />
      {secret !== null && (
        <p class="secret">
          <label>
            Secret (shown once)
            <input id="new-token-secret" readOnly value={secret} onFocus={(event) => event.currentTarget.select()} />
          </label>
        </p>
      )}
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Token</th>
              <th scope="col">User</th>
              <th scope="col">Created</th>
              <th scope="col">Revoked</th>
              <th scope="col"><span class="visually-hidden">Actions</span></th>
            </tr>
          </thead>
          <tbody>
            {tokens.map((token) => (
              <tr data-token-id={token.id}>
                <th scope="row" data-label="Token">{token.id}</th>
                <td data-label="User">{token.user}{token.admin ? " (admin)" : ""}</td>
                <td data-label="Created">{localTime(token.createdAt)}</td>
                <td data-label="Revoked">{localTime(token.revokedAt)}</td>
                <td>
                  {token.revokedAt === null && !token.admin && (
                    <button type="button" class="danger" onClick={() => void revoke(token.id)}>
                      Revoke {token.id}
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
