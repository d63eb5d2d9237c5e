-- Tenants' env values are sealed at rest (docs/architecture.md, "Secrets"): each value in
-- instances.env is "spw1:<key_id>:<AES-256-GCM>", sealed by the apiserver under a key from
-- secrets.key_file. Values stored before are sealed by the first apiserver that starts with a key.

-- Each key that has sealed values here, with a known text sealed under it: an apiserver started
-- with another key of the same id, or without a key still in use, refuses to start.
CREATE TABLE secret_keys (
  key_id      text PRIMARY KEY CHECK (key_id ~ '^[A-Za-z0-9_-]{1,32}$'),
  check_value text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- No plain text is written again, whatever the code does (values from before are sealed at start-up,
-- so the rows already there are not checked now).
ALTER TABLE instances ADD CONSTRAINT instances_env_sealed
  CHECK (NOT jsonb_path_exists(env, '$.* ? (!(@ starts with "spw1:"))')) NOT VALID;
