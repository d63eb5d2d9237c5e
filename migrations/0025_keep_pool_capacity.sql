-- A pool's GPUs on hosts that are up and not disabled (what placement calls its total), kept as it
-- changes, so that a launch reads a few rows instead of adding up every host of the pool
-- (provisioning/fleet_sql.hpp, pool_counts; docs/fleet-scale.md).
--
-- Every change to a host that moves the total appends a row to pool_capacity_changes: no row is
-- updated by two writers, so a registration storm does not queue on one counter. The leader folds
-- the changes into pool_capacity every tick (fold_pool_capacity), deleting what it adds in the same
-- transaction. A reader adds pool_capacity and the changes not yet folded in one statement, so it
-- sees each change exactly once, folded or not.
CREATE TABLE pool_capacity (
  region    text NOT NULL,
  gpu_model text NOT NULL,
  up_gpus   bigint NOT NULL,
  PRIMARY KEY (region, gpu_model)
);
CREATE TABLE pool_capacity_changes (
  region    text NOT NULL,
  gpu_model text NOT NULL,
  up_gpus   bigint NOT NULL
);
CREATE INDEX pool_capacity_changes_pool ON pool_capacity_changes (region, gpu_model);

CREATE FUNCTION hosts_capacity_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.health = 'up' AND OLD.state <> 'disabled' THEN
    INSERT INTO pool_capacity_changes VALUES (OLD.region, OLD.gpu_model, -OLD.gpu_count);
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.health = 'up' AND NEW.state <> 'disabled' THEN
    INSERT INTO pool_capacity_changes VALUES (NEW.region, NEW.gpu_model, NEW.gpu_count);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER hosts_capacity_added_or_removed AFTER INSERT OR DELETE ON hosts
  FOR EACH ROW EXECUTE FUNCTION hosts_capacity_changed();
-- Heartbeats set health on every flush; only a real change is a change of capacity.
CREATE TRIGGER hosts_capacity_updated AFTER UPDATE OF health, state, gpu_count, region, gpu_model ON hosts
  FOR EACH ROW
  WHEN (OLD.health IS DISTINCT FROM NEW.health OR OLD.state IS DISTINCT FROM NEW.state
        OR OLD.gpu_count IS DISTINCT FROM NEW.gpu_count OR OLD.region IS DISTINCT FROM NEW.region
        OR OLD.gpu_model IS DISTINCT FROM NEW.gpu_model)
  EXECUTE FUNCTION hosts_capacity_changed();

-- The hosts there are now. CREATE TRIGGER holds off writers to hosts until this commits, so no change
-- falls between this sum and the triggers.
INSERT INTO pool_capacity
SELECT region, gpu_model, coalesce(sum(gpu_count) FILTER (WHERE health = 'up' AND state <> 'disabled'), 0)
FROM hosts GROUP BY region, gpu_model;

-- The rest of pool_counts without a pass over the pool: its largest host (an index's last entry)
-- and its draining hosts (few).
CREATE INDEX hosts_pool_gpu_count ON hosts (region, gpu_model, gpu_count);
CREATE INDEX hosts_draining ON hosts (region, gpu_model) WHERE state = 'draining';
