-- billing.unmetered_held_time = bill (docs/architecture.md, "Billing"): held GPU time no sample
-- covered is rated when its hour is judged, beside the metered rows, marked so. The metering fold
-- rewrites an hour's metered rows only (its samples are the truth of them); a judged row stays.
ALTER TABLE usage_rated_hourly ADD COLUMN unmetered boolean NOT NULL DEFAULT false;
