-- Spend controls (docs/architecture.md, "Prepaid balances and spend limits"): a tenant is postpaid
-- (the default, billed monthly) or prepaid (it spends credit finance added); either may have a
-- monthly spend limit. The alert flags make each alert go out once per crossing.
CREATE TABLE spend_controls (
  tenant_id            text PRIMARY KEY REFERENCES tenants (id),
  mode                 text NOT NULL DEFAULT 'postpaid' CHECK (mode IN ('postpaid', 'prepaid')),
  prepaid_since        timestamptz,  -- rated usage from this hour on spends the credit
  monthly_limit_cents  bigint CHECK (monthly_limit_cents > 0),
  low_alerted          boolean NOT NULL DEFAULT false,  -- runway below billing.low_balance_runway
  empty_alerted        boolean NOT NULL DEFAULT false,  -- balance at zero
  limit_warned_period  text,         -- the month the 80 % alert went out
  limit_reached_period text,         -- the month 100 % was reached
  updated_at           timestamptz NOT NULL,
  CHECK (mode = 'postpaid' OR prepaid_since IS NOT NULL)
);

-- Credit finance adds to a tenant: an append-only ledger (nothing in it is ever changed).
CREATE TABLE credit_ledger (
  id           text PRIMARY KEY,
  tenant_id    text NOT NULL REFERENCES tenants (id),
  amount_cents bigint NOT NULL CHECK (amount_cents > 0),
  reason       text NOT NULL,
  created_by   text NOT NULL,
  created_at   timestamptz NOT NULL
);
CREATE INDEX credit_ledger_tenant ON credit_ledger (tenant_id, created_at);
CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON credit_ledger
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
