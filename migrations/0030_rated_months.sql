-- Each tenant-month's rated GPU time per instance and price, kept as the hourly rated rows change
-- (docs/architecture.md, "Billing"): drafts, balances and spend limits read one row per instance
-- and price of a month instead of adding up the month's hours again on every pass, so what they
-- cost follows the fleet, not the day of the month or the months since a tenant went prepaid.
-- usage_rated_hourly stays what every cent is recomputed from (verify-invoices, FOCUS): these rows
-- are its sums, kept in the same transaction as each change to it by the statement triggers below,
-- whoever writes it (the fold, a whole-hour refold, re-rating after a price change, the unmetered
-- judge). The same triggers mark the tenant-months changed for their drafts (billing_dirty): the
-- one place that says what billing has to look at again, where each writer marked them before.
CREATE TABLE usage_rated_monthly (
  tenant_id                 text    NOT NULL,
  period                    text    NOT NULL,  -- the UTC month, YYYY-MM
  instance_id               text    NOT NULL,
  market                    text    NOT NULL,
  price_micros_per_gpu_hour bigint,            -- NULL: time no price was in effect for
  unmetered                 boolean NOT NULL,
  gpu_ms                    bigint  NOT NULL   -- 0 once re-rating moved it all to another price
);
CREATE UNIQUE INDEX usage_rated_monthly_key ON usage_rated_monthly
  (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered) NULLS NOT DISTINCT;
-- Running instances' rows change every pass: room for HOT updates.
ALTER TABLE usage_rated_monthly SET (fillfactor = 50);

INSERT INTO usage_rated_monthly (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered, gpu_ms)
SELECT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), instance_id, market, price_micros_per_gpu_hour,
       unmetered, sum(gpu_ms)
FROM usage_rated_hourly
GROUP BY 1, 2, 3, 4, 5, 6;

-- One statement's change to usage_rated_hourly as deltas per month (rows in key order, so that two
-- writers lock the months' rows in one order).
CREATE FUNCTION usage_rated_monthly_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_rated_monthly AS m (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered,
                                        gpu_ms)
  SELECT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), instance_id, market, price_micros_per_gpu_hour,
         unmetered, sum(gpu_ms)
  FROM new_rows
  GROUP BY 1, 2, 3, 4, 5, 6
  ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered)
  DO UPDATE SET gpu_ms = m.gpu_ms + EXCLUDED.gpu_ms;
  INSERT INTO billing_dirty (tenant_id, period, marked_at)
  SELECT DISTINCT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), now() FROM new_rows ORDER BY 1, 2
  ON CONFLICT (tenant_id, period) DO NOTHING;
  RETURN NULL;
END $$;

CREATE FUNCTION usage_rated_monthly_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_rated_monthly AS m (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered,
                                        gpu_ms)
  SELECT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), instance_id, market, price_micros_per_gpu_hour,
         unmetered, sum(gpu_ms)
  FROM (SELECT tenant_id, hour, instance_id, market, price_micros_per_gpu_hour, unmetered, gpu_ms FROM new_rows
        UNION ALL
        SELECT tenant_id, hour, instance_id, market, price_micros_per_gpu_hour, unmetered, -gpu_ms FROM old_rows) d
  GROUP BY 1, 2, 3, 4, 5, 6
  HAVING sum(gpu_ms) <> 0
  ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered)
  DO UPDATE SET gpu_ms = m.gpu_ms + EXCLUDED.gpu_ms;
  INSERT INTO billing_dirty (tenant_id, period, marked_at)
  SELECT DISTINCT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), now()
  FROM (SELECT tenant_id, hour FROM new_rows UNION ALL SELECT tenant_id, hour FROM old_rows) d ORDER BY 1, 2
  ON CONFLICT (tenant_id, period) DO NOTHING;
  RETURN NULL;
END $$;

CREATE FUNCTION usage_rated_monthly_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_rated_monthly AS m (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered,
                                        gpu_ms)
  SELECT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), instance_id, market, price_micros_per_gpu_hour,
         unmetered, -sum(gpu_ms)
  FROM old_rows
  GROUP BY 1, 2, 3, 4, 5, 6
  ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT (tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered)
  DO UPDATE SET gpu_ms = m.gpu_ms + EXCLUDED.gpu_ms;
  INSERT INTO billing_dirty (tenant_id, period, marked_at)
  SELECT DISTINCT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), now() FROM old_rows ORDER BY 1, 2
  ON CONFLICT (tenant_id, period) DO NOTHING;
  RETURN NULL;
END $$;

CREATE TRIGGER usage_rated_monthly_on_insert AFTER INSERT ON usage_rated_hourly
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_rated_monthly_add();
CREATE TRIGGER usage_rated_monthly_on_update AFTER UPDATE ON usage_rated_hourly
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_rated_monthly_change();
CREATE TRIGGER usage_rated_monthly_on_delete AFTER DELETE ON usage_rated_hourly
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_rated_monthly_remove();
-- A TRUNCATE would leave the sums behind: refused (delete the rows instead).
CREATE TRIGGER usage_rated_hourly_no_truncate BEFORE TRUNCATE ON usage_rated_hourly
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
-- Closing a month drafts every tenant's invoice from its month's rows.
CREATE INDEX usage_rated_monthly_period ON usage_rated_monthly (period);
