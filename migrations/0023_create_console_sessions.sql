-- Web console sessions (docs/console.md): a browser signs in with an API key once and from then on
-- holds only this session's cookie (HttpOnly); the key itself never reaches the browser's storage.
-- The server keeps the SHA-256 of the cookie's secret, never the secret. A session acts as its key:
-- revoking the key, or suspending its tenant, ends what the session may do at once.
CREATE TABLE console_sessions (
  id          text PRIMARY KEY,
  key_id      text NOT NULL REFERENCES api_keys (id),
  secret_hash bytea NOT NULL,
  csrf_token  text NOT NULL,  -- sent back on every state change (X-CSRF-Token)
  created_at  timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL,
  ended_at    timestamptz,     -- signed out
  CHECK (expires_at > created_at)
);
CREATE INDEX console_sessions_key ON console_sessions (key_id);
