-- Replicas keep verified API keys in memory (auth.key_cache_ttl). Whatever can turn a valid key into
-- a refused one is broadcast on `spillway_auth`, so every replica drops what it remembered at once.
-- last_used_at updates are not among them: they change nothing about who may call.
-- The payload is the trigger's argument and the row's id: "key:<id>" or "tenant:<id>".
CREATE FUNCTION notify_auth_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('spillway_auth', TG_ARGV[0] || ':' || OLD.id);
  RETURN NULL;
END $$;

CREATE TRIGGER api_keys_auth_changed AFTER UPDATE ON api_keys
  FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.role IS DISTINCT FROM NEW.role OR
                     OLD.secret_hash IS DISTINCT FROM NEW.secret_hash OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
  EXECUTE FUNCTION notify_auth_change('key');
CREATE TRIGGER api_keys_auth_deleted AFTER DELETE ON api_keys
  FOR EACH ROW EXECUTE FUNCTION notify_auth_change('key');

CREATE TRIGGER tenants_auth_changed AFTER UPDATE ON tenants
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.is_operator IS DISTINCT FROM NEW.is_operator)
  EXECUTE FUNCTION notify_auth_change('tenant');
CREATE TRIGGER tenants_auth_deleted AFTER DELETE ON tenants
  FOR EACH ROW EXECUTE FUNCTION notify_auth_change('tenant');
