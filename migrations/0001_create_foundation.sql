-- Tenants, API keys and the audit log: who may call the API, and what they did.

CREATE TABLE tenants (
  id          text PRIMARY KEY,
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  gpu_quota   integer NOT NULL DEFAULT 0 CHECK (gpu_quota >= 0),
  -- The operator's own tenant: the only one whose keys may hold admin, finance or operator roles.
  is_operator boolean NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenants_name_unique ON tenants (lower(name));
CREATE UNIQUE INDEX tenants_one_operator ON tenants (is_operator) WHERE is_operator;

CREATE TABLE api_keys (
  id           text PRIMARY KEY,
  tenant_id    text NOT NULL REFERENCES tenants (id),
  role         text NOT NULL CHECK (role IN ('admin', 'finance', 'operator', 'member')),
  name         text,
  -- SHA-256 of a 256-bit random secret; the secret itself is never stored.
  secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
  created_at   timestamptz NOT NULL DEFAULT now(),
  revoked_at   timestamptz,
  last_used_at timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

-- A customer tenant's key can only be a member key, whatever the application code does.
CREATE FUNCTION api_keys_check_role() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.role <> 'member' AND NOT (SELECT is_operator FROM tenants WHERE id = NEW.tenant_id) THEN
    RAISE EXCEPTION 'role % is only for keys of the operator tenant', NEW.role
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER api_keys_role BEFORE INSERT OR UPDATE OF role, tenant_id ON api_keys
  FOR EACH ROW EXECUTE FUNCTION api_keys_check_role();

CREATE TABLE audit_log (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at           timestamptz NOT NULL DEFAULT now(),
  actor_key_id text REFERENCES api_keys (id),
  tenant_id    text REFERENCES tenants (id),
  action       text NOT NULL,
  target       text,
  request_id   text
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);

CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
