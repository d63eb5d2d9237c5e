-- The fleet (hosts and their GPUs), capacity pools, the price book, instances, GPU allocations, the
-- spot price history and idempotency keys.

CREATE TABLE hosts (
  id                 text PRIMARY KEY,
  hostname           text NOT NULL UNIQUE,
  region             text NOT NULL,
  zone               text NOT NULL,
  gpu_model          text NOT NULL,
  gpu_count          integer NOT NULL CHECK (gpu_count > 0),
  -- What the operator wants of the host; `health` is what its heartbeats say.
  state              text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'disabled')),
  health             text NOT NULL DEFAULT 'up' CHECK (health IN ('up', 'down')),
  token_hash         text NOT NULL,
  assignment_version bigint NOT NULL DEFAULT 1,
  agent_version      text,
  last_heartbeat     timestamptz NOT NULL DEFAULT now(),
  registered_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hosts_pool ON hosts (region, gpu_model);

CREATE TABLE gpus (
  host_id      text NOT NULL REFERENCES hosts (id),
  gpu_index    integer NOT NULL CHECK (gpu_index >= 0),
  uuid         text NOT NULL UNIQUE,
  model        text NOT NULL,
  memory_bytes bigint NOT NULL,
  PRIMARY KEY (host_id, gpu_index)
);

-- Agents long-poll their assignments; any change to a host's version wakes them, in every replica.
CREATE FUNCTION hosts_notify_assignments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('spillway_assignments', NEW.id);
  RETURN NEW;
END $$;
CREATE TRIGGER hosts_assignments_changed AFTER UPDATE OF assignment_version ON hosts
  FOR EACH ROW WHEN (OLD.assignment_version IS DISTINCT FROM NEW.assignment_version)
  EXECUTE FUNCTION hosts_notify_assignments();

-- The operator's internal demand per pool (region, gpu_model): GPUs kept out of the market.
CREATE TABLE pool_reservations (
  region                 text NOT NULL,
  gpu_model              text NOT NULL,
  internal_reserved_gpus integer NOT NULL CHECK (internal_reserved_gpus >= 0),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (region, gpu_model)
);

-- The on-demand price book, effective-dated: the price at time t is the latest row with
-- effective_from <= t.
CREATE TABLE prices (
  gpu_model                 text NOT NULL,
  market                    text NOT NULL CHECK (market = 'on_demand'),
  price_micros_per_gpu_hour bigint NOT NULL CHECK (price_micros_per_gpu_hour > 0),
  effective_from            timestamptz NOT NULL,
  PRIMARY KEY (gpu_model, market, effective_from)
);

CREATE TABLE instances (
  id                   text PRIMARY KEY,
  tenant_id            text NOT NULL REFERENCES tenants (id),
  name                 text,
  instance_type        text NOT NULL,
  gpu_model            text NOT NULL,
  gpus                 integer NOT NULL CHECK (gpus > 0),
  region               text NOT NULL,
  market               text NOT NULL CHECK (market IN ('on_demand', 'spot')),
  max_price_micros     bigint CHECK (max_price_micros > 0),
  state                text NOT NULL CHECK (state IN ('pending', 'provisioning', 'running', 'terminating',
                                                      'terminated', 'preempting', 'failed')),
  host_id              text REFERENCES hosts (id),
  gpu_indices          integer[] NOT NULL DEFAULT '{}',
  created_at           timestamptz NOT NULL DEFAULT now(),
  started_at           timestamptz,
  ended_at             timestamptz,
  end_reason           text,
  preempt_at           timestamptz,
  preempt_reason       text,
  last_reported_at     timestamptz,
  version              integer NOT NULL DEFAULT 1,
  CHECK (market = 'spot' OR max_price_micros IS NULL),
  CHECK ((state IN ('terminated', 'failed')) = (ended_at IS NOT NULL))
);
CREATE INDEX instances_tenant ON instances (tenant_id, id);
CREATE INDEX instances_live_host ON instances (host_id) WHERE state NOT IN ('terminated', 'failed');
CREATE INDEX instances_live_pool ON instances (region, gpu_model) WHERE state NOT IN ('terminated', 'failed');

-- One row per GPU in use. The primary key is what makes double-booking a GPU impossible,
-- whatever the application code does.
CREATE TABLE gpu_allocations (
  host_id      text NOT NULL,
  gpu_index    integer NOT NULL,
  instance_id  text NOT NULL REFERENCES instances (id),
  allocated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (host_id, gpu_index),
  FOREIGN KEY (host_id, gpu_index) REFERENCES gpus (host_id, gpu_index)
);
CREATE INDEX gpu_allocations_instance ON gpu_allocations (instance_id);

-- Append-only spot price history, with the inputs that produced each price.
CREATE TABLE spot_prices (
  region                     text NOT NULL,
  gpu_model                  text NOT NULL,
  effective_from             timestamptz NOT NULL,
  price_micros_per_gpu_hour  bigint NOT NULL CHECK (price_micros_per_gpu_hour > 0),
  on_demand_micros           bigint NOT NULL,
  spare_fraction_ppm         integer NOT NULL CHECK (spare_fraction_ppm BETWEEN 0 AND 1000000),
  target_micros              bigint NOT NULL,
  PRIMARY KEY (region, gpu_model, effective_from),
  CHECK (price_micros_per_gpu_hour <= on_demand_micros)
);
CREATE TRIGGER spot_prices_append_only BEFORE UPDATE OR DELETE ON spot_prices
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

CREATE TABLE idempotency_keys (
  tenant_id       text NOT NULL REFERENCES tenants (id),
  key             text NOT NULL,
  request_hash    text NOT NULL,
  state           text NOT NULL CHECK (state IN ('in_flight', 'done')),
  response_status integer,
  response_body   text,
  instance_id     text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, key)
);
