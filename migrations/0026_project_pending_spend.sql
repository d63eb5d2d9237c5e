-- Spend controls act on what instances hold, not only on what was rated (docs/architecture.md,
-- "Prepaid balances and spend limits"): each evaluation reads a tenant's instances that are live or
-- ended within metering.max_sample_age, and their GPU holds. This index finds those instances
-- without reading every instance the tenant ever ran.
CREATE INDEX instances_tenant_ended ON instances (tenant_id, ended_at);

-- The first month anything could have been billed (the first instance's start, the first volume):
-- a billing route's period before it is refused, and these find it in one index probe each.
CREATE INDEX instances_started ON instances (started_at);
CREATE INDEX volumes_created ON volumes (created_at);
