-- "Live" (holds or waits for GPUs: not terminated or failed) defined once in SQL, as C++ defines it
-- once in provisioning/words.hpp. An IMMUTABLE SQL function is inlined by the planner, so partial
-- indexes over it match queries that use it.
CREATE FUNCTION instance_is_live(state text) RETURNS boolean
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT state NOT IN ('terminated', 'failed') $$;

DROP INDEX instances_live_host;
DROP INDEX instances_live_pool;
CREATE INDEX instances_live_host ON instances (host_id) WHERE instance_is_live(state);
CREATE INDEX instances_live_pool ON instances (region, gpu_model) WHERE instance_is_live(state);
CREATE INDEX instances_live_tenant ON instances (tenant_id) WHERE instance_is_live(state);

DO $$
DECLARE c text;
BEGIN
  SELECT conname INTO c FROM pg_constraint
  WHERE conrelid = 'instances'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%ended_at IS NOT NULL%';
  EXECUTE format('ALTER TABLE instances DROP CONSTRAINT %I', c);
END $$;
ALTER TABLE instances ADD CONSTRAINT instances_ended_when_not_live
  CHECK (instance_is_live(state) = (ended_at IS NULL));

-- When a suspension began: a suspended tenant's instances end after tenants.suspension_grace. The
-- API sets it; a suspension written by hand without it counts from updated_at.
ALTER TABLE tenants ADD COLUMN suspended_at timestamptz;
UPDATE tenants SET suspended_at = updated_at WHERE status = 'suspended';

-- Operators look instances up by host and state; admins page the audit log by actor and action.
CREATE INDEX instances_host ON instances (host_id, id);
CREATE INDEX audit_log_actor ON audit_log (actor_key_id, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
