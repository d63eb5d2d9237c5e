-- Unmetered held time (docs/architecture.md, "Metering"): GPU time an instance held but no sample
-- of which ever arrived (its agent stopped or killed, its host lost for good). Never billed (it is
-- not known to have run), but measured, so that the operator sees what it gave away.
--
-- An instance-hour is judged once it is settled on its host: the host's folded_through is past the
-- hour's end, so every sample of it is in usage_hourly. Held (its holds, clipped to the hour) less
-- metered (usage_hourly: ingest cuts samples at the turns of hours) is exact; an hour with any of it
-- gets a row here.
CREATE TABLE unmetered_hourly (
  hour           timestamptz NOT NULL,
  instance_id    text NOT NULL REFERENCES instances (id),
  tenant_id      text NOT NULL REFERENCES tenants (id),
  region         text NOT NULL,
  gpu_model      text NOT NULL,
  market         text NOT NULL CHECK (market IN ('on_demand', 'spot')),
  held_gpu_ms    bigint NOT NULL,
  metered_gpu_ms bigint NOT NULL CHECK (metered_gpu_ms >= 0),
  CHECK (held_gpu_ms > metered_gpu_ms),
  PRIMARY KEY (hour, instance_id)
);
CREATE INDEX unmetered_hourly_tenant ON unmetered_hourly (tenant_id, hour);

-- Per host: every hour before judged_through is judged. Written by the leader's step alone (ingest
-- never touches it, so the two take no row locks against each other).
CREATE TABLE unmetered_watermarks (
  host_id        text PRIMARY KEY REFERENCES hosts (id),
  judged_through timestamptz NOT NULL
);
-- Hours already folded before this migration are not judged (history stays as it was).
INSERT INTO unmetered_watermarks (host_id, judged_through)
SELECT host_id, date_trunc('hour', folded_through) FROM host_watermarks WHERE folded_through IS NOT NULL;

-- The holds of a host that were open at some time: the judged hour's, without reading every hold
-- the host ever had.
CREATE INDEX gpu_allocation_history_host_open
  ON gpu_allocation_history (host_id, (coalesce(released_at, 'infinity'::timestamptz)));
