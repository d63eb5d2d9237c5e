-- Billing periods (UTC calendar months, "2026-11") that are closed: their invoices are final.
-- Billing's period close writes the row; metering's retention step drops a day of samples only
-- once its month is here (nothing un-invoiced is ever dropped).
CREATE TABLE billing_periods_closed (
  period    text PRIMARY KEY CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
  closed_at timestamptz NOT NULL
);
