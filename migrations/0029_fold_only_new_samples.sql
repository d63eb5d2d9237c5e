-- Folds that read only what is new (docs/architecture.md, "Metering"): the hourly rollups grow by
-- what each ingest commit stored instead of refolding the whole hour every pass, so a pass costs
-- what arrived since the last one, not the hour so far.

-- Every ingest commit is a tick: its samples carry the tick's number, and its row in ingest_ticks
-- says that they are not folded yet. The fold takes ticks (deleting their rows) and adds their
-- samples to the rollups in the transaction that takes them: a tick is folded once, whatever
-- order ticks commit in, and a tick not yet committed is simply taken by a later pass.
CREATE SEQUENCE ingest_tick_seq;
-- Null for samples stored before this migration (or written by hand): only a whole-hour refold
-- (usage_dirty_hours) reads them.
ALTER TABLE usage_samples ADD COLUMN tick bigint;
-- A tick's samples lie together in each partition (they were copied together), so a block-range
-- index finds them; summarized as ranges fill, so that a pass does not read the table's tail.
CREATE INDEX usage_samples_tick ON usage_samples USING brin (tick) WITH (pages_per_range = 32, autosummarize = on);

CREATE TABLE ingest_ticks (
  tick       bigint PRIMARY KEY,
  -- The ingest transaction's now(): no sample it attributed to an instance ends after it.
  started_at timestamptz NOT NULL,
  -- Its samples' ts range (retention keeps a day until no tick touching it is left).
  first_ts   timestamptz NOT NULL,
  last_ts    timestamptz NOT NULL
);

-- Utilisation as an exact sum (percent x milliseconds), so that adding a pass's samples to an
-- hour gives the row a refold of the hour would: util_pct_mean is that sum over the time.
ALTER TABLE usage_hourly ADD COLUMN util_pct_ms bigint;
UPDATE usage_hourly SET util_pct_ms = round(util_pct_mean * gpu_ms)::bigint;
ALTER TABLE usage_hourly ALTER COLUMN util_pct_ms SET NOT NULL;
ALTER TABLE pool_usage_hourly ADD COLUMN util_pct_ms bigint;
UPDATE pool_usage_hourly SET util_pct_ms = round(util_pct_mean * (allocated_gpu_ms + idle_gpu_ms))::bigint;
ALTER TABLE pool_usage_hourly ALTER COLUMN util_pct_ms SET NOT NULL;

-- Every pass updates each running instance's rows of the hour: room on each page for the new
-- versions keeps those updates HOT (no index entry per update, no bloat through the hour).
ALTER TABLE usage_hourly SET (fillfactor = 50);
ALTER TABLE pool_usage_hourly SET (fillfactor = 50);
ALTER TABLE usage_rated_hourly SET (fillfactor = 50);

-- A rated row per instance-hour and price pair: a pass adds to it.
CREATE UNIQUE INDEX usage_rated_hourly_key ON usage_rated_hourly
  (hour, instance_id, price_micros_per_gpu_hour, list_price_micros_per_gpu_hour, unmetered) NULLS NOT DISTINCT;

-- A price entered for a time may fall after samples already folded at the price before it (a spot
-- price takes effect at the database's clock, and an ingest that began just after it can commit,
-- and be folded, before the price does). Each price change is queued here, an insert with no
-- conflict (so it takes no lock that ingest or the repricer's host locks could wait on); the fold
-- re-rates exactly the instance-hours whose folded samples reach past it.
CREATE TABLE rating_price_changes (
  id             bigserial PRIMARY KEY,
  market         text NOT NULL CHECK (market IN ('on_demand', 'spot')),
  region         text,               -- null: every region (the on-demand book, the list price of spot too)
  gpu_model      text NOT NULL,
  effective_from timestamptz NOT NULL,
  queued_at      timestamptz NOT NULL DEFAULT now()
);

DROP TRIGGER prices_mark_hours ON prices;
DROP FUNCTION prices_mark_hours();
CREATE FUNCTION prices_queue_rerating() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'spot_prices' THEN
    INSERT INTO rating_price_changes (market, region, gpu_model, effective_from)
    VALUES ('spot', NEW.region, NEW.gpu_model, NEW.effective_from);
  ELSIF NEW.market = 'on_demand' THEN
    INSERT INTO rating_price_changes (market, region, gpu_model, effective_from)
    VALUES ('on_demand', NULL, NEW.gpu_model, NEW.effective_from);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER prices_queue_rerating AFTER INSERT ON prices
  FOR EACH ROW EXECUTE FUNCTION prices_queue_rerating();
CREATE TRIGGER spot_prices_queue_rerating AFTER INSERT ON spot_prices
  FOR EACH ROW EXECUTE FUNCTION prices_queue_rerating();
