-- What a tenant runs and how it gets in: the launch spec of an instance. The agent of the instance's
-- host gets all of it (env values included) over its host token; the API shows env names only.
ALTER TABLE instances ADD COLUMN image text;
ALTER TABLE instances ADD COLUMN command text[] NOT NULL DEFAULT '{}';
ALTER TABLE instances ADD COLUMN env jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(env) = 'object');
ALTER TABLE instances ADD COLUMN ssh_key_ids text[] NOT NULL DEFAULT '{}';
-- The public keys as they were at launch: deleting a key later does not lock anyone out of a
-- running instance, nor let anyone new in.
ALTER TABLE instances ADD COLUMN authorized_keys text[] NOT NULL DEFAULT '{}';
ALTER TABLE instances ADD COLUMN disk_gb integer CHECK (disk_gb BETWEEN 1 AND 65536);
ALTER TABLE instances ADD COLUMN min_cuda text CHECK (min_cuda ~ '^[0-9]{1,2}\.[0-9]{1,2}$');

-- The ports an instance asked for, and the external port its host maps each to once it is placed.
-- At most one live mapping per host and external port, whatever the code does; a mapping is
-- released (not deleted) when the instance ends, so the record of what was reachable stays.
CREATE TABLE instance_ports (
  instance_id   text NOT NULL REFERENCES instances (id),
  internal_port integer NOT NULL CHECK (internal_port BETWEEN 1 AND 65535),
  protocol      text NOT NULL CHECK (protocol IN ('http', 'tcp')),
  host_id       text REFERENCES hosts (id),
  external_port integer CHECK (external_port BETWEEN 1024 AND 65535),
  released_at   timestamptz,
  PRIMARY KEY (instance_id, internal_port),
  CHECK ((host_id IS NULL) = (external_port IS NULL))
);
CREATE UNIQUE INDEX instance_ports_in_use ON instance_ports (host_id, external_port)
  WHERE host_id IS NOT NULL AND released_at IS NULL;

-- Where an instance mounts each of its volumes. volumes.attached_instance_id (one column) is what
-- holds a volume to one instance at a time; this keeps the mount paths, and the history.
CREATE TABLE instance_volumes (
  instance_id text NOT NULL REFERENCES instances (id),
  volume_id   text NOT NULL REFERENCES volumes (id),
  mount_path  text NOT NULL,
  PRIMARY KEY (instance_id, volume_id),
  UNIQUE (instance_id, mount_path)
);
CREATE INDEX instance_volumes_volume ON instance_volumes (volume_id);
