-- Webhooks (docs/architecture.md, "Webhooks"): endpoints tenants and finance register, an outbox of
-- events written in the same transaction as the change each reports, and one delivery per event and
-- endpoint that the leader's webhook_deliveries step works off, at least once, with backoff.
CREATE TABLE webhook_endpoints (
  id            text PRIMARY KEY,
  tenant_id     text REFERENCES tenants (id),  -- null: every tenant's events (finance, admin)
  url           text NOT NULL,
  events        text[] NOT NULL CHECK (cardinality(events) > 0),
  description   text NOT NULL DEFAULT '',
  secret_sealed text NOT NULL,                 -- the signing secret, sealed (secrets.key_file)
  created_by    text NOT NULL,
  created_at    timestamptz NOT NULL,
  deleted_at    timestamptz
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id) WHERE deleted_at IS NULL;

-- The outbox: an event's id is what a receiver deduplicates by.
CREATE TABLE webhook_events (
  id         text PRIMARY KEY,
  seq        bigserial UNIQUE,
  type       text NOT NULL,
  tenant_id  text NOT NULL REFERENCES tenants (id),
  data       jsonb NOT NULL,
  created_at timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries (
  event_id        text NOT NULL REFERENCES webhook_events (id),
  endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL,
  delivered_at    timestamptz,
  failed_at       timestamptz,                 -- given up after webhooks.max_attempts
  last_status     integer,
  last_error      text,
  PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
  WHERE delivered_at IS NULL AND failed_at IS NULL;
