-- Metering integrity (docs/architecture.md, "Metering"): a GPU's time is stored once, and an
-- instance is attributed only the time it held the GPU.

-- Per GPU: the end of the latest sample stored for it. Ingest locks a GPU's row while it stores
-- time of that GPU, and checks a sample that begins before it against what is stored, so no two
-- stored samples of one GPU overlap, whatever batch numbers they came under.
CREATE TABLE gpu_sample_marks (
  host_id        text NOT NULL,
  gpu_index      integer NOT NULL,
  stored_through timestamptz,
  PRIMARY KEY (host_id, gpu_index),
  FOREIGN KEY (host_id, gpu_index) REFERENCES gpus (host_id, gpu_index) ON DELETE CASCADE
);
CREATE FUNCTION gpus_sample_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO gpu_sample_marks (host_id, gpu_index) VALUES (NEW.host_id, NEW.gpu_index) ON CONFLICT DO NOTHING;
  RETURN NEW;
END $$;
CREATE TRIGGER gpus_sample_mark AFTER INSERT ON gpus FOR EACH ROW EXECUTE FUNCTION gpus_sample_mark();
INSERT INTO gpu_sample_marks (host_id, gpu_index, stored_through)
SELECT g.host_id, g.gpu_index,
       (SELECT max(s.ts) FROM usage_samples s WHERE s.host_id = g.host_id AND s.gpu_index = g.gpu_index)
FROM gpus g;

-- Samples stored before this rule whose interval was not wholly inside a hold of their instance
-- (accepted within the clock-skew tolerance) are the GPU's time without an owner from now on:
-- never attributed beyond a hold, at the cost of the few milliseconds of such a sample that were
-- inside it.
UPDATE usage_samples s SET instance_id = NULL
WHERE s.instance_id IS NOT NULL AND NOT EXISTS (
  SELECT 1 FROM gpu_allocation_history h
  WHERE h.instance_id = s.instance_id AND h.host_id = s.host_id AND h.gpu_index = s.gpu_index
    AND h.allocated_at <= s.ts - s.interval_ms * interval '1 millisecond'
    AND coalesce(h.released_at, 'infinity') >= s.ts);

-- A stored sample now belongs to the hour holding its last millisecond (one ending on the hour is
-- the hour before's). Every hour with samples is folded again under that rule.
INSERT INTO usage_dirty_hours (hour, marked_at)
SELECT DISTINCT h, now() FROM usage_samples s,
  LATERAL (VALUES (date_trunc('hour', s.ts)), (date_trunc('hour', s.ts - interval '1 millisecond'))) AS v (h)
ON CONFLICT (hour) DO NOTHING;

-- The end of the latest sample in each instance-hour: usage compares metered time with held time
-- up to what metering has seen.
ALTER TABLE usage_hourly ADD COLUMN last_sample_at timestamptz;
