-- Replicas keep verified API keys in memory (auth.key_cache_ttl). Whatever can turn a valid key into
-- a refused one is broadcast on `spillway_auth`, so every replica drops what it remembered at once.
-- last_used_at updates are not among them: they change nothing about who may call.
CREATE FUNCTION api_keys_notify_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('spillway_auth', 'key:' || OLD.id);
  RETURN NULL;
END $$;
CREATE TRIGGER api_keys_auth_changed AFTER UPDATE ON api_keys
  FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.role IS DISTINCT FROM NEW.role OR
                     OLD.secret_hash IS DISTINCT FROM NEW.secret_hash OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
  EXECUTE FUNCTION api_keys_notify_auth();
CREATE TRIGGER api_keys_auth_deleted AFTER DELETE ON api_keys
  FOR EACH ROW EXECUTE FUNCTION api_keys_notify_auth();

CREATE FUNCTION tenants_notify_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('spillway_auth', 'tenant:' || OLD.id);
  RETURN NULL;
END $$;
CREATE TRIGGER tenants_auth_changed AFTER UPDATE ON tenants
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.is_operator IS DISTINCT FROM NEW.is_operator)
  EXECUTE FUNCTION tenants_notify_auth();
CREATE TRIGGER tenants_auth_deleted AFTER DELETE ON tenants
  FOR EACH ROW EXECUTE FUNCTION tenants_notify_auth();
