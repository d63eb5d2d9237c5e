-- Rating (docs/architecture.md, "Billing"): each hour's metered GPU-ms per instance split by the
-- price in effect at each stored sample's ts: the on-demand book's for on-demand instances, the
-- pool's spot price for spot instances. The metering fold writes it with the other rollups, so an
-- hour with a price change inside it is priced at each price for its own share.
CREATE TABLE usage_rated_hourly (
  hour                      timestamptz NOT NULL,
  instance_id               text NOT NULL REFERENCES instances (id),
  tenant_id                 text NOT NULL REFERENCES tenants (id),
  market                    text NOT NULL CHECK (market IN ('on_demand', 'spot')),
  -- null: no price was in effect at those samples' time; rating reports such time, never bills it at 0
  price_micros_per_gpu_hour bigint CHECK (price_micros_per_gpu_hour > 0),
  gpu_ms                    bigint NOT NULL CHECK (gpu_ms > 0)
);
CREATE INDEX usage_rated_hourly_tenant ON usage_rated_hourly (tenant_id, hour);
CREATE INDEX usage_rated_hourly_hour ON usage_rated_hourly (hour);

-- An on-demand price entered for a time (scheduled ahead, or seeded now) may fall in an hour already
-- folded, by samples from a host whose clock runs ahead: that hour is folded again, under the hour
-- rule of the rollups (a sample ending on the hour is the hour before's). The spot history is not
-- marked so: the repricer writes it under its pool's host locks, and marking an hour there would
-- take the dirty-hour row after host locks where ingest takes them in the other order (a deadlock).
-- A spot price takes effect at the database's now, and the hour is folded again with every batch.
CREATE FUNCTION prices_mark_hours() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_dirty_hours (hour, marked_at)
  VALUES (date_trunc('hour', NEW.effective_from), now()),
         (date_trunc('hour', NEW.effective_from - interval '1 millisecond'), now())
  ON CONFLICT (hour) DO NOTHING;
  RETURN NEW;
END $$;
CREATE TRIGGER prices_mark_hours AFTER INSERT ON prices
  FOR EACH ROW EXECUTE FUNCTION prices_mark_hours();

-- Every hour folded before is folded again, now rated too.
INSERT INTO usage_dirty_hours (hour, marked_at) SELECT DISTINCT hour, now() FROM usage_hourly
ON CONFLICT (hour) DO NOTHING;
