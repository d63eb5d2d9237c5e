-- The price book finance keeps (docs/architecture.md, "Billing"): on-demand prices per GPU model
-- (prices, since 0002) and the storage price per GB-month, both effective-dated. A change is
-- scheduled from a future time and never rewrites one in effect; each change is audited.

CREATE TABLE storage_prices (
  effective_from            timestamptz PRIMARY KEY,
  price_micros_per_gb_month bigint NOT NULL CHECK (price_micros_per_gb_month > 0)
);

-- Both books only grow: a price once set is history that invoices were rated against.
CREATE FUNCTION price_book_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the price book is append-only: % on %', TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER prices_append_only BEFORE UPDATE OR DELETE ON prices
  FOR EACH ROW EXECUTE FUNCTION price_book_append_only();
CREATE TRIGGER storage_prices_append_only BEFORE UPDATE OR DELETE ON storage_prices
  FOR EACH ROW EXECUTE FUNCTION price_book_append_only();
