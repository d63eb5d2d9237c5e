-- The list price beside each rated row (docs/architecture.md, "Billing"): the on-demand book's price
-- at the rows' ts, for spot rows too, so the spot discount given (list - billed) and a cost export's
-- ListCost are exact, not the price at the hour's start. Null where the book had no price then.
ALTER TABLE usage_rated_hourly
  ADD COLUMN list_price_micros_per_gpu_hour bigint CHECK (list_price_micros_per_gpu_hour > 0);

-- Every hour rated before is rated again, with its list prices.
INSERT INTO usage_dirty_hours (hour, marked_at) SELECT DISTINCT hour, now() FROM usage_rated_hourly
ON CONFLICT (hour) DO NOTHING;
