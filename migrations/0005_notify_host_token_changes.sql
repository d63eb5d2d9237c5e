-- Replicas remember verified host tokens beside API keys (auth.key_cache_ttl). A new registration
-- rotates a host's token: every replica forgets the old one at once, as for a revoked key.
CREATE FUNCTION notify_host_token_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('spillway_auth', 'key:' || OLD.id);
  RETURN NULL;
END $$;
CREATE TRIGGER hosts_token_changed AFTER UPDATE OF token_hash ON hosts
  FOR EACH ROW WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash)
  EXECUTE FUNCTION notify_host_token_change();

-- Each replica writes the heartbeats it received in batches, and says here when it last did and
-- when it last had to refuse a heartbeat it could not even attribute to a host (its request pool
-- was full). The leader judges no host silent while a live replica lags or refuses: a heartbeat the
-- control plane did not take in never counts against its host.
CREATE TABLE heartbeat_writers (
  replica_id text PRIMARY KEY,
  flushed_at timestamptz NOT NULL,
  started_at timestamptz NOT NULL,
  refused_at timestamptz
);
