-- The price book finance keeps (docs/architecture.md, "Billing"): on-demand prices per GPU model
-- (prices, since 0002) and the storage price per GB-month, both effective-dated. A change is
-- scheduled from a future time and never rewrites one in effect; each change is audited.

CREATE TABLE storage_prices (
  effective_from            timestamptz PRIMARY KEY,
  price_micros_per_gb_month bigint NOT NULL CHECK (price_micros_per_gb_month > 0)
);

-- Both books only grow, as the spot history does: a price once set is what usage was rated against.
CREATE TRIGGER prices_append_only BEFORE UPDATE OR DELETE ON prices
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER storage_prices_append_only BEFORE UPDATE OR DELETE ON storage_prices
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
