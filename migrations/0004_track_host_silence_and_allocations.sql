-- Hosts remember when and why they were marked down: a host that fell silent alone had its
-- instances failed ('silent'); one of many that fell silent together kept them ('mass_silence',
-- the brake), since that looks like a network or control-plane fault, not dead machines.
ALTER TABLE hosts ADD COLUMN down_since timestamptz;
ALTER TABLE hosts ADD COLUMN down_reason text CHECK (down_reason IN ('silent', 'mass_silence'));
UPDATE hosts SET down_reason = 'silent', down_since = last_heartbeat WHERE health = 'down';
ALTER TABLE hosts ADD CONSTRAINT hosts_down_reason CHECK ((health = 'down') = (down_reason IS NOT NULL));

-- Who held each GPU when: one row per allocation, closed when the GPU is released. Written by
-- triggers on gpu_allocations, so it is in the same transaction as every allocation and release,
-- whatever code makes them. gpu_allocations (its primary key) stays the double-booking guard;
-- metering checks against this that an instance held a GPU at a sample's time.
CREATE TABLE gpu_allocation_history (
  instance_id  text NOT NULL REFERENCES instances (id),
  host_id      text NOT NULL,
  gpu_index    integer NOT NULL,
  allocated_at timestamptz NOT NULL,
  released_at  timestamptz,
  PRIMARY KEY (instance_id, host_id, gpu_index, allocated_at),
  FOREIGN KEY (host_id, gpu_index) REFERENCES gpus (host_id, gpu_index),
  CHECK (released_at IS NULL OR released_at >= allocated_at)
);
CREATE INDEX gpu_allocation_history_gpu ON gpu_allocation_history (host_id, gpu_index, allocated_at);
-- At most one open allocation per GPU, as in gpu_allocations.
CREATE UNIQUE INDEX gpu_allocation_history_open ON gpu_allocation_history (host_id, gpu_index)
  WHERE released_at IS NULL;

CREATE FUNCTION gpu_allocations_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at)
    VALUES (NEW.instance_id, NEW.host_id, NEW.gpu_index, NEW.allocated_at);
    RETURN NEW;
  END IF;
  UPDATE gpu_allocation_history SET released_at = greatest(now(), allocated_at)
  WHERE host_id = OLD.host_id AND gpu_index = OLD.gpu_index AND instance_id = OLD.instance_id
    AND released_at IS NULL;
  RETURN OLD;
END $$;
CREATE TRIGGER gpu_allocations_history AFTER INSERT OR DELETE ON gpu_allocations
  FOR EACH ROW EXECUTE FUNCTION gpu_allocations_history();

-- Allocations made before this migration: their history starts when they were made.
INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at)
SELECT instance_id, host_id, gpu_index, allocated_at FROM gpu_allocations;
