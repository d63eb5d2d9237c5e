-- Hourly rollups of usage_samples (docs/architecture.md, "Metering"): what the usage API and
-- billing read instead of raw samples. A sample belongs to the UTC hour of its ts.

-- Per instance and hour: GPU-milliseconds metered, samples, utilisation (weighted by time),
-- energy and the highest memory use seen.
CREATE TABLE usage_hourly (
  hour           timestamptz NOT NULL,
  instance_id    text NOT NULL REFERENCES instances (id),
  tenant_id      text NOT NULL REFERENCES tenants (id),
  gpu_ms         bigint NOT NULL CHECK (gpu_ms >= 0),
  samples        integer NOT NULL,
  util_pct_mean  double precision NOT NULL,
  energy_mj      bigint NOT NULL,
  mem_peak_bytes bigint NOT NULL,
  PRIMARY KEY (hour, instance_id)
);
CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant_id, hour);
CREATE INDEX usage_hourly_instance ON usage_hourly (instance_id, hour);

-- Per pool and hour: GPU-milliseconds held by instances and idle (what the spot market sells).
CREATE TABLE pool_usage_hourly (
  hour             timestamptz NOT NULL,
  region           text NOT NULL,
  gpu_model        text NOT NULL,
  allocated_gpu_ms bigint NOT NULL,
  idle_gpu_ms      bigint NOT NULL,
  samples          integer NOT NULL,
  util_pct_mean    double precision NOT NULL,
  energy_mj        bigint NOT NULL,
  PRIMARY KEY (hour, region, gpu_model)
);

-- Hours whose samples changed since they were last folded: ingest marks every hour it writes
-- to, in the same transaction; the rollup step folds each again (idempotently) and unmarks it.
CREATE TABLE usage_dirty_hours (
  hour      timestamptz PRIMARY KEY,
  marked_at timestamptz NOT NULL
);

-- Up to when each host's samples are in the rollups: the host's ingest watermark as it was when
-- the last complete fold began (every sample at or before it had committed, and was folded).
-- Coverage and usage_complete_through are measured against this.
ALTER TABLE host_watermarks ADD COLUMN folded_through timestamptz;
