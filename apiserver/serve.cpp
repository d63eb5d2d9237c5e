#include "apiserver/serve.hpp"

#include <csignal>
#include <iostream>

#include "apiserver/app.hpp"
#include "apiserver/controllers.hpp"
#include "apiserver/notifier.hpp"
#include "apiserver/provisioning/fleet.hpp"
#include "apiserver/provisioning/fleet_metrics.hpp"
#include "apiserver/audit.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "apiserver/handlers/api_keys.hpp"
#include "apiserver/handlers/tenants.hpp"
#include "apiserver/http/server.hpp"
#include "core/db.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/migrate.hpp"

namespace spillway {
namespace {

std::unique_ptr<pqxx::connection> ConnectOnce(const Config& config) {
  try {
    auto conn = std::make_unique<pqxx::connection>(
        WithConnectTimeout(config.String("database.url"), config.Duration("database.connect_timeout")));
    PrepareAll(*conn);
    return conn;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver: cannot connect to the database (database.url): " << e.what() << "\n";
    return nullptr;
  }
}

// 0 when the schema is current, else prints why and returns 2.
int RequireCurrentSchema(pqxx::connection& conn) {
  const auto status = CheckSchema(conn, EmbeddedMigrations());
  if (status.current()) return 0;
  std::cerr << "spillway-apiserver: the database schema is behind this binary: " << status.pending.size()
            << " migration(s) pending (first: " << status.pending.front()
            << "). Run `spillway-apiserver migrate` first.\n";
  return 2;
}

http::ListenerOptions Listener(const Config& c, const std::string& name, const std::string& listen_key) {
  http::ListenerOptions o;
  o.name = name;
  o.listen = *ParseHostPort(c.String(listen_key));
  o.max_body_bytes = static_cast<size_t>(c.Int("server.max_body_bytes"));
  o.header_timeout = c.Duration("server.header_timeout");
  o.body_timeout = c.Duration("server.body_timeout");
  o.idle_timeout = c.Duration("server.idle_timeout");
  return o;
}

}  // namespace

int RunMigrate(const Config& config) {
  auto conn = ConnectOnce(config);
  if (!conn) return 1;
  try {
    const auto r = ApplyMigrations(*conn, EmbeddedMigrations());
    std::cout << "migrations: " << r.applied << " applied, " << r.already_applied << " already applied\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver migrate: " << e.what() << "\n";
    return 1;
  }
}

int RunBootstrapAdmin(const Config& config) {
  auto conn = ConnectOnce(config);
  if (!conn) return 1;
  try {
    if (int rc = RequireCurrentSchema(*conn)) return rc;
    pqxx::work tx(*conn);
    const std::string tenant = handlers::EnsureOperatorTenant(tx, config.String("operator.tenant_name"));
    const auto key = handlers::IssueApiKey(tx, tenant, "admin", "bootstrap-admin");
    AuditSystem(tx, tenant, "api_key.create", key.id);
    tx.commit();
    std::cout << key.token << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver bootstrap-admin: " << e.what() << "\n";
    return 1;
  }
}

int RunServe(const Config& config) {
  std::signal(SIGPIPE, SIG_IGN);
  {
    auto conn = ConnectOnce(config);
    if (!conn) return 1;
    try {
      if (int rc = RequireCurrentSchema(*conn)) return rc;
      SeedPriceBook(*conn, config);
    } catch (const std::exception& e) {
      std::cerr << "spillway-apiserver: cannot prepare the database: " << e.what() << "\n";
      return 1;
    }
  }
  Metrics metrics;
  DbOptions db_options;
  db_options.url = config.String("database.url");
  db_options.pool_size = static_cast<int>(config.Int("database.pool_size"));
  db_options.max_queue = static_cast<size_t>(config.Int("database.max_queue"));
  db_options.acquire_timeout = config.Duration("database.acquire_timeout");
  db_options.connect_timeout = config.Duration("database.connect_timeout");
  db_options.statement_timeout = config.Duration("database.statement_timeout");
  db_options.retry_after = config.Duration("database.retry_after");
  Database db(db_options, metrics.registry());

  FleetMetrics fleet_metrics(metrics.registry());
  const Millis key_cache_ttl = config.Duration("auth.key_cache_ttl");
  KeyCache key_cache(key_cache_ttl, 100'000, &metrics.registry());
  AssignmentNotifier notifier(config.String("database.url"), config.Duration("database.connect_timeout"),
                              key_cache_ttl.count() > 0 ? &key_cache : nullptr);
  notifier.Start();
  Controllers controllers(config, fleet_metrics);

  http::Runtime runtime(static_cast<int>(config.Int("server.io_threads")));
  runtime.OnDrain([&notifier] { notifier.Stop(); });
  ApiDispatcher api(config, db, metrics, &fleet_metrics, &notifier, &key_cache);
  AdminDispatcher admin(db, metrics, [&runtime] { return runtime.Draining(); });
  try {
    runtime.AddListener(Listener(config, "api", "server.listen"), api);
    if (config.Bool("tls.enabled")) {
      auto o = Listener(config, "api-tls", "tls.listen");
      o.tls = true;
      o.cert_file = config.String("tls.cert_file");
      o.key_file = config.String("tls.key_file");
      if (o.cert_file.empty() || o.key_file.empty()) {
        std::cerr << "spillway-apiserver: tls.enabled needs tls.cert_file and tls.key_file\n";
        return 2;
      }
      runtime.AddListener(o, api);
    }
    runtime.AddListener(Listener(config, "admin", "server.admin_listen"), admin);
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver: " << e.what() << "\n";
    return std::string(e.what()).rfind("tls.", 0) == 0 ? 2 : 1;
  }
  controllers.Start();
  log::Info("spillway-apiserver serving", {{"version", SPILLWAY_VERSION}});
  runtime.Run(config.Duration("server.shutdown_timeout"));
  controllers.Stop();
  notifier.Stop();
  db.Stop();
  log::Info("spillway-apiserver stopped");
  return 0;
}

}  // namespace spillway
