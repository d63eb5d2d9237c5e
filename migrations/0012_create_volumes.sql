-- Volumes: a tenant's storage in a region, on the filesystem the region's hosts share, attached at
-- launch to one instance at a time (attached_instance_id), kept when that instance ends.
CREATE TABLE volumes (
  id                   text PRIMARY KEY,
  tenant_id            text NOT NULL REFERENCES tenants (id),
  name                 text NOT NULL,
  region               text NOT NULL,
  size_gb              integer NOT NULL CHECK (size_gb BETWEEN 1 AND 65536),
  attached_instance_id text REFERENCES instances (id),
  created_at           timestamptz NOT NULL,
  deleted_at           timestamptz,
  CHECK (deleted_at IS NULL OR attached_instance_id IS NULL),
  CHECK (deleted_at IS NULL OR deleted_at >= created_at)
);
CREATE UNIQUE INDEX volumes_live_name ON volumes (tenant_id, name) WHERE deleted_at IS NULL;
CREATE INDEX volumes_tenant ON volumes (tenant_id, id);

-- GB-milliseconds each volume existed in each UTC hour: what billing prices storage by, beside
-- GPU-hours. Written by the leader's volume metering step for closed hours, recomputably.
CREATE TABLE volume_usage_hourly (
  hour      timestamptz NOT NULL,
  volume_id text NOT NULL REFERENCES volumes (id),
  tenant_id text NOT NULL REFERENCES tenants (id),
  gb_ms     bigint NOT NULL CHECK (gb_ms >= 0),
  PRIMARY KEY (hour, volume_id)
);
CREATE INDEX volume_usage_hourly_tenant ON volume_usage_hourly (tenant_id, hour);
-- Up to where (an hour boundary) every volume's hours are metered.
CREATE TABLE volume_metering (
  id              boolean PRIMARY KEY DEFAULT true CHECK (id),
  metered_through timestamptz NOT NULL
);
