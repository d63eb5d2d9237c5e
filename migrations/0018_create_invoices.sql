-- Invoices (docs/architecture.md, "Billing"): one per tenant and UTC month, a draft kept current by
-- the leader until its month is closed, then finalized: numbered from one gap-free series, hashed,
-- and never changed again (PostgreSQL refuses it, whatever the code does). Credit notes give back
-- part or all of a finalized invoice under a series of their own.

-- A tenant's billing details (the invoice's buyer) and its flat tax rate, in basis points of the
-- subtotal. Set by an admin or finance; copied into each invoice when it is finalized.
CREATE TABLE billing_profiles (
  tenant_id   text PRIMARY KEY REFERENCES tenants (id),
  legal_name  text NOT NULL DEFAULT '',
  address     text NOT NULL DEFAULT '',
  tax_id      text NOT NULL DEFAULT '',
  email       text NOT NULL DEFAULT '',
  tax_rate_bp integer NOT NULL DEFAULT 0 CHECK (tax_rate_bp BETWEEN 0 AND 10000),
  updated_at  timestamptz NOT NULL
);

-- The number series. A number is taken by an UPDATE of its row inside the finalizing transaction:
-- a transaction that rolls back gives its number back, so the series never has a gap, and the row
-- lock orders concurrent finalizers. Never reset by month or year.
CREATE TABLE billing_number_series (
  series     text PRIMARY KEY CHECK (series IN ('invoice', 'credit_note')),
  prefix     text NOT NULL,
  last_value bigint NOT NULL CHECK (last_value >= 0)
);
INSERT INTO billing_number_series (series, prefix, last_value) VALUES ('invoice', 'SPW-', 0), ('credit_note', 'SPW-CN-', 0);

CREATE TABLE invoices (
  id                     text PRIMARY KEY,
  tenant_id              text NOT NULL REFERENCES tenants (id),
  period                 text NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
  status                 text NOT NULL CHECK (status IN ('draft', 'finalized')),
  number                 text UNIQUE,
  currency               text NOT NULL DEFAULT 'USD',
  subtotal_cents         bigint NOT NULL,
  tax_rate_bp            integer NOT NULL CHECK (tax_rate_bp BETWEEN 0 AND 10000),
  tax_cents              bigint NOT NULL,
  total_cents            bigint NOT NULL CHECK (total_cents = subtotal_cents + tax_cents),
  -- Up to when the hosts that ran the tenant's instances in the month had reported (null: unknown)
  -- and metered over held GPU time in the month up to then ("0.9981"; null when nothing was held).
  usage_complete_through timestamptz,
  coverage               text,
  closed_incomplete      boolean NOT NULL DEFAULT false,
  hosts_behind           text[] NOT NULL DEFAULT '{}',
  buyer                  jsonb NOT NULL,
  issuer                 jsonb NOT NULL,
  -- A draft's content hash (to skip rewriting an unchanged draft); a finalized invoice's SHA-256 of
  -- `canonical`, the canonical JSON of everything it says.
  content_sha256         text NOT NULL,
  canonical              text,
  created_at             timestamptz NOT NULL,
  updated_at             timestamptz NOT NULL,
  finalized_at           timestamptz,
  UNIQUE (tenant_id, period),
  CHECK ((status = 'finalized') = (number IS NOT NULL)),
  CHECK ((status = 'finalized') = (canonical IS NOT NULL AND finalized_at IS NOT NULL))
);
CREATE INDEX invoices_period ON invoices (period, tenant_id);
CREATE INDEX invoices_tenant ON invoices (tenant_id, period DESC);

CREATE TABLE invoice_lines (
  invoice_id        text NOT NULL REFERENCES invoices (id),
  position          integer NOT NULL CHECK (position >= 1),
  kind              text NOT NULL CHECK (kind IN ('usage', 'storage', 'late_usage', 'tax')),
  description       text NOT NULL,
  instance_id       text,
  volume_id         text,
  market            text CHECK (market IN ('on_demand', 'spot')),
  usage_period      text,           -- the month the usage is from (late usage: an earlier one)
  quantity          text NOT NULL,  -- a decimal: GPU-hours or GB-months with six places; tax: the rate in %
  unit              text NOT NULL CHECK (unit IN ('gpu_hour', 'gb_month', 'percent')),
  unit_price_micros bigint,         -- the average price per unit, rounded half-even (null for tax)
  amount_cents      bigint NOT NULL,
  PRIMARY KEY (invoice_id, position)
);

-- What each finalized invoice billed of each month's rated usage, per instance and price: late
-- usage of a closed month is its rated GPU-ms now less what invoices have billed of it.
CREATE TABLE invoice_usage (
  invoice_id   text NOT NULL REFERENCES invoices (id),
  tenant_id    text NOT NULL,
  usage_period text NOT NULL,
  instance_id  text NOT NULL,
  market       text NOT NULL,
  price_micros bigint,  -- null: time no price covered (reported, never billed)
  gpu_ms       bigint NOT NULL CHECK (gpu_ms > 0)
);
CREATE INDEX invoice_usage_tenant ON invoice_usage (tenant_id, usage_period);

CREATE TABLE credit_notes (
  id             text PRIMARY KEY,
  number         text NOT NULL UNIQUE,
  invoice_id     text NOT NULL REFERENCES invoices (id),
  tenant_id      text NOT NULL REFERENCES tenants (id),
  subtotal_cents bigint NOT NULL CHECK (subtotal_cents > 0),
  tax_cents      bigint NOT NULL CHECK (tax_cents >= 0),
  total_cents    bigint NOT NULL CHECK (total_cents = subtotal_cents + tax_cents),
  reason         text NOT NULL,
  created_by     text NOT NULL,
  created_at     timestamptz NOT NULL
);
CREATE INDEX credit_notes_invoice ON credit_notes (invoice_id, number);
CREATE TRIGGER credit_notes_append_only BEFORE UPDATE OR DELETE ON credit_notes
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- A finalized invoice, its lines and what it billed never change: refused here, not only by the API.
CREATE FUNCTION invoices_refuse_final_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status = 'finalized' THEN
    RAISE EXCEPTION 'invoice % (%) is finalized: it never changes (issue a credit note)', OLD.number, OLD.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER invoices_final BEFORE UPDATE OR DELETE ON invoices
  FOR EACH ROW EXECUTE FUNCTION invoices_refuse_final_change();

CREATE FUNCTION invoice_parts_refuse_final_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  inv text := CASE WHEN TG_OP = 'DELETE' THEN OLD.invoice_id ELSE NEW.invoice_id END;
BEGIN
  IF EXISTS (SELECT 1 FROM invoices WHERE id = inv AND status = 'finalized')
     OR (TG_OP = 'UPDATE' AND EXISTS (SELECT 1 FROM invoices WHERE id = OLD.invoice_id AND status = 'finalized')) THEN
    RAISE EXCEPTION 'invoice % is finalized: its % never change', inv, TG_TABLE_NAME
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER invoice_lines_final BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
  FOR EACH ROW EXECUTE FUNCTION invoice_parts_refuse_final_change();
CREATE TRIGGER invoice_usage_final BEFORE INSERT OR UPDATE OR DELETE ON invoice_usage
  FOR EACH ROW EXECUTE FUNCTION invoice_parts_refuse_final_change();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER invoice_usage_no_truncate BEFORE TRUNCATE ON invoice_usage FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Tenant-months whose rated usage changed since their draft was last computed: the metering fold
-- marks them, the leader's billing_drafts step takes them. A mark for a closed month is late usage.
CREATE TABLE billing_dirty (
  tenant_id text NOT NULL,
  period    text NOT NULL,
  marked_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, period)
);
-- Closed months with usage rated after their close, per tenant: billed on the tenant's next draft.
CREATE TABLE billing_late_usage (
  tenant_id text NOT NULL,
  period    text NOT NULL,
  PRIMARY KEY (tenant_id, period)
);

-- A period's close: when, and whether some hosts had not reported past its end (closed incomplete).
ALTER TABLE billing_periods_closed
  ADD COLUMN incomplete   boolean NOT NULL DEFAULT false,
  ADD COLUMN hosts_behind text[] NOT NULL DEFAULT '{}',
  ADD COLUMN closed_by    text NOT NULL DEFAULT 'system';

-- Every tenant-month rated so far gets its draft.
INSERT INTO billing_dirty (tenant_id, period, marked_at)
SELECT DISTINCT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), now() FROM usage_rated_hourly
ON CONFLICT DO NOTHING;
