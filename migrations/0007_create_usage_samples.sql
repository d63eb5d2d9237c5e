-- Metering (docs/architecture.md, "Metering"): every GPU sample an agent ships, and the batch
-- ledger that makes shipping exactly-once.

-- One row per GPU sample, partitioned by UTC day of ts. No unique index: exactly-once comes from
-- the ledger below (a batch and its ledger row commit together), and a per-row unique index would
-- cost most of COPY's speed. BRIN on ts: samples arrive nearly in time order, so it stays tiny.
CREATE TABLE usage_samples (
  ts             timestamptz NOT NULL,   -- the end of the interval the sample covers
  host_id        text NOT NULL,
  gpu_index      smallint NOT NULL,
  instance_id    text,                   -- null: no tenant instance ran on the GPU (never billed)
  interval_ms    integer NOT NULL CHECK (interval_ms > 0),
  util_pct       smallint NOT NULL CHECK (util_pct BETWEEN 0 AND 100),
  mem_used_bytes bigint NOT NULL CHECK (mem_used_bytes >= 0),
  power_mw       integer NOT NULL CHECK (power_mw >= 0),
  energy_mj      bigint NOT NULL CHECK (energy_mj >= 0)
) PARTITION BY RANGE (ts);
CREATE INDEX usage_samples_ts ON usage_samples USING brin (ts);

-- The partition for the UTC day holding `day`, created when missing; returns its name.
CREATE FUNCTION usage_samples_partition(day timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  first_ms timestamptz := date_trunc('day', day AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
  name text := 'usage_samples_' || to_char(first_ms AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
  IF to_regclass(name) IS NULL THEN
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF usage_samples FOR VALUES FROM (%L) TO (%L)',
                   name, first_ms, first_ms + interval '24 hours');
  END IF;
  RETURN name;
END $$;

-- Drops one of usage_samples' daily partitions, named as usage_samples_partition names them;
-- false (nothing dropped) for any other name. The retention step decides which.
CREATE FUNCTION usage_samples_drop_partition(name text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF name !~ '^usage_samples_[0-9]{8}$' OR NOT EXISTS (
       SELECT 1 FROM pg_inherits WHERE inhparent = 'usage_samples'::regclass AND inhrelid = to_regclass(name)) THEN
    RETURN false;
  END IF;
  EXECUTE format('DROP TABLE %I', name);
  RETURN true;
END $$;

-- Days around the migration; the metering step keeps them ahead from then on.
SELECT usage_samples_partition(now() + d * interval '24 hours') FROM generate_series(-1, 3) AS d;

-- The batch ledger: a batch is committed once. A replayed (host, batch_seq) is answered
-- {"duplicate": true} and writes nothing.
CREATE TABLE ingest_batches (
  host_id         text NOT NULL REFERENCES hosts (id),
  batch_seq       bigint NOT NULL CHECK (batch_seq >= 0),
  samples         integer NOT NULL,
  sampled_through timestamptz NOT NULL,
  received_at     timestamptz NOT NULL,
  PRIMARY KEY (host_id, batch_seq)
);

-- Per host: up to when everything it sampled is in (its ingest watermark), and what its clock
-- looked like against the server's at its last batch.
CREATE TABLE host_watermarks (
  host_id         text PRIMARY KEY REFERENCES hosts (id),
  sampled_through timestamptz NOT NULL,
  last_batch_seq  bigint NOT NULL,
  last_batch_at   timestamptz NOT NULL,
  clock_skew_ms   bigint                 -- agent's send time minus the server's receive time
);
