#include "apiserver/serve.hpp"

#include <malloc.h>
#include <sys/resource.h>

#include <csignal>
#include <thread>
#include <iostream>

#include "apiserver/app.hpp"
#include "apiserver/settings.hpp"
#include "apiserver/billing_metrics.hpp"
#include "webhooks/delivery.hpp"
#include "apiserver/idempotency.hpp"
#include "provisioning/fleet_steps.hpp"
#include "provisioning/heartbeats.hpp"
#include "core/periodic.hpp"
#include "apiserver/notifier.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/fleet_metrics.hpp"
#include "accounts/api_keys.hpp"
#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "apiserver/http/server.hpp"
#include "billing/audit.hpp"
#include "billing/prices.hpp"
#include "core/db.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/migrate.hpp"
#include "core/money.hpp"
#include "metering/fold.hpp"
#include "metering/ingest.hpp"
#include "metering/usage.hpp"
#include "metering/volume_hours.hpp"
#include "provisioning/sealed_env.hpp"

namespace spillway {
namespace {

// The advisory lock whose holder runs the periodic steps (the same key as before the steps were
// split out, so mixed versions during a rolling upgrade still elect one leader).
constexpr std::int64_t kLeaderLock = 7308324466018009602LL;
// Webhook deliveries run in a loop of their own (their own lock, session and thread): a slow
// receiver holds up its deliveries only, never the fleet's steps.
constexpr std::int64_t kWebhookLeaderLock = 7308324466018009603LL;

std::unique_ptr<pqxx::connection> ConnectOnce(const Config& config, const char* role) {
  try {
    // Migrations may take long: no statement_timeout for the subcommands.
    auto session = DbOptions::From(config).Session(role);
    session.statement_timeout = Millis(0);
    return OpenSession(session);
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

}  // namespace

int RunMigrate(const Config& config) {
  auto conn = ConnectOnce(config, "spillway-migrate");
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
  auto conn = ConnectOnce(config, "spillway-bootstrap-admin");
  if (!conn) return 1;
  try {
    if (int rc = RequireCurrentSchema(*conn)) return rc;
    const std::string token = InTransaction(*conn, [&](Tx& tx) {
      const std::string tenant = EnsureOperatorTenant(tx, config.String("operator.tenant_name"));  // once
      const auto issued = IssueApiKey(tx, tenant, "admin", "bootstrap-admin");
      RecordAudit(tx, SystemAudit(tenant, "api_key.create", issued.key.id));
      return issued.token;
    });
    std::cout << token << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver bootstrap-admin: " << e.what() << "\n";
    return 1;
  }
}

int RunRotateSecrets(const Config& config) {
  try {
    const SecretBox box = SecretBox::FromFile(config.String("secrets.key_file"));
    auto conn = ConnectOnce(config, "spillway-rotate-secrets");
    if (!conn) return 1;
    if (int rc = RequireCurrentSchema(*conn)) return rc;
    const ResealReport r = ResealEnv(*conn, box);
    std::cout << "re-sealed " << r.values << " env value(s) of " << r.instances << " instance(s) under key "
              << box.newest_key_id() << "\n";
    for (const auto& id : r.retired)
      std::cout << "key " << id << " seals nothing any more: it may be removed from " << box.source() << "\n";
    return 0;
  } catch (const SecretError& e) {
    std::cerr << "spillway-apiserver rotate-secrets: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver rotate-secrets: " << e.what() << "\n";
    return 1;
  }
}

int RunVerifyInvoices(const Config& config, const std::string& period) {
  if (!ParseMonth(period)) {
    std::cerr << "spillway-apiserver verify-invoices: --period: expected YYYY-MM, got \"" << period << "\"\n";
    return 2;
  }
  auto conn = ConnectOnce(config, "spillway-verify-invoices");
  if (!conn) return 1;
  try {
    if (int rc = RequireCurrentSchema(*conn)) return rc;
    const bool bill_unmetered = config.String("billing.unmetered_held_time") == "bill";
    // One snapshot: invoices, their usage and the stored samples as of one moment.
    Snapshot tx(*conn, "verify_invoices");
    const billing::AuditReport r = billing::VerifyInvoices(tx, period, bill_unmetered);
    for (const auto& m : r.mismatches)
      std::cout << "MISMATCH " << (m.invoice_id.empty() ? "-" : m.invoice_id) << " " << m.tenant_id << " " << m.what
                << "\n";
    std::cout << period << ": " << r.invoices << " invoice(s), " << r.lines << " usage line(s), "
              << r.stored_gpu_ms << " GPU-ms stored, " << r.billed_gpu_ms << " of them on finalized invoices; "
              << r.mismatches.size() << " mismatch(es)\n";
    return r.mismatches.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver verify-invoices: " << e.what() << "\n";
    return 1;
  }
}

int RunServe(const Config& config) {
  std::signal(SIGPIPE, SIG_IGN);
  // glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core), and
  // a connection's memory freed on another thread's arena stays there: with a dozen threads that is
  // most of an idle server's RSS. Two arenas are enough for two io threads and the pool.
  ::mallopt(M_ARENA_MAX, 2);
  // Every agent's long poll holds a connection: take all the descriptors the hard limit allows
  // (10,000 hosts need over 10,000; systemd's LimitNOFILE sets the hard limit).
  if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  ServerSettings server;
  try {
    server = ServerSettings::From(config);
  } catch (const std::invalid_argument& e) {
    std::cerr << "spillway-apiserver: " << e.what() << "\n";
    return 2;
  }
  std::optional<SecretBox> secrets;
  {
    auto conn = ConnectOnce(config, "spillway-apiserver");
    if (!conn) return 1;
    try {
      if (int rc = RequireCurrentSchema(*conn)) return rc;
      SeedPriceBook(*conn, config.on_demand_prices(), *ParseMicros(config.String("billing.storage_price_per_gb_month")),
                    SystemClockInstance().Now());
      secrets = SecretBox::FromFile(config.String("secrets.key_file"));
      if (const std::int64_t sealed = PrepareSecrets(*conn, *secrets); sealed > 0)
        log::Info("env values stored before sealing are sealed now", {{"values", sealed}});
    } catch (const SecretError& e) {
      std::cerr << "spillway-apiserver: " << e.what() << "\n";
      return 2;
    } catch (const std::exception& e) {
      std::cerr << "spillway-apiserver: cannot prepare the database: " << e.what() << "\n";
      return 1;
    }
  }
  Metrics metrics;
  const FleetSettings fleet_settings = FleetSettings::From(config);
  const DbOptions db_options = DbOptions::From(config);
  Database db(db_options, metrics.registry());

  FleetMetrics fleet_metrics(metrics.registry());
  const Millis key_cache_ttl = server.key_cache_ttl;
  KeyCache key_cache(key_cache_ttl, 100'000, &metrics.registry());
  AssignmentNotifier notifier(db_options.url, db_options.connect_timeout,
                              key_cache_ttl.count() > 0 ? &key_cache : nullptr);
  HeartbeatRecorder heartbeats(db_options.Session("spillway-heartbeats"),
                               fleet_settings.heartbeat_flush_interval, SystemClockInstance(),
                               metrics.registry());
  notifier.Observe([&heartbeats](const std::vector<std::string>& hosts, bool all, bool listening) {
    heartbeats.Invalidate(hosts, all, listening);
  });
  heartbeats.Start();
  notifier.Start();
  const Clock& clock = SystemClockInstance();
  const FleetContext fleet{fleet_settings, &fleet_metrics, clock, &*secrets};
  LeaderOptions leader;
  leader.session = db_options.Session("spillway-leader");
  leader.lock_key = kLeaderLock;
  leader.tick = server.controllers_tick;
  // A leader that stalls for half the heartbeat timeout was not listening: judge hosts afresh.
  leader.stall_limit = fleet_settings.silence.timeout / 2;
  PeriodicSteps steps(leader, clock, metrics.registry());
  RegisterFleetSteps(steps, fleet);
  steps.Add({"expire_idempotency_keys", std::chrono::minutes(1),
             [ttl = server.idempotency_ttl](pqxx::connection& c, const StepContext& s) {
               ExpireIdempotencyKeys(c, s.now, ttl);
             }});

  const auto ingest_settings = metering::IngestSettings::From(config);
  metering::Ingestor ingest(db_options.Session("spillway-ingest"), ingest_settings, clock, metrics.registry());
  metrics.Add(ingest.clock_skew());
  steps.Add({"metering_partitions", std::chrono::hours(1),
             [&ingest](pqxx::connection& c, const StepContext& s) { ingest.CreatePartitionsAhead(c, s.now); }});
  steps.Add({"metering_rollup", ingest_settings.rollup_interval,
             [](pqxx::connection& c, const StepContext&) { metering::FoldUsage(c); }});
  steps.Add({"metering_retention", std::chrono::hours(1),
             [retention = ingest_settings.retention](pqxx::connection& c, const StepContext& s) {
               metering::DropExpiredPartitions(c, s.now, retention);
             }});
  steps.Add({"metering_volume_hours", std::chrono::minutes(5),
             [](pqxx::connection& c, const StepContext& s) { metering::MeterVolumeHours(c, s.now); }});
  steps.Add({"metering_prune_ledger", std::chrono::hours(1),
             [&ingest](pqxx::connection& c, const StepContext& s) { ingest.PruneLedger(c, s.now); }});
  steps.Add({"metering_gauges", std::chrono::seconds(15),
             [&ingest](pqxx::connection& c, const StepContext& s) { ingest.RefreshGauges(c, s.now); }});
  steps.Add({"metering_attribution_check", std::chrono::minutes(1),
             [&ingest](pqxx::connection& c, const StepContext& s) { ingest.CheckAttribution(c, s.now); }});

  Billing billing(billing::BillingSettings::From(config), metrics.registry());
  billing.Register(steps, ingest_settings.rollup_interval);
  LeaderOptions deliverer;
  deliverer.session = db_options.Session("spillway-webhooks");
  deliverer.lock_key = kWebhookLeaderLock;
  deliverer.tick = std::chrono::milliseconds(250);
  deliverer.leader_metric = "spillway_webhook_leader";
  PeriodicSteps webhook_steps(deliverer, clock, metrics.registry());
  Webhooks webhooks(webhooks::Settings::From(config), &*secrets, metrics.registry());
  webhooks.Register(webhook_steps);

  http::Runtime runtime(server.io_threads);
  runtime.OnDrain([&notifier] { notifier.Stop(); });
  // A rolling restart: once draining starts (SIGTERM), this replica stops leading at once, so
  // another takes the periodic steps within its tick instead of after this one's drain. Stopping
  // waits for a step in progress, so it runs beside the drain, not on the io thread.
  std::thread handover;
  runtime.OnDrain([&handover, &steps, &webhook_steps] {
    if (handover.joinable()) return;
    handover = std::thread([&steps, &webhook_steps] {
      steps.Stop();
      webhook_steps.Stop();
      log::Info("stopped leading: another replica takes the periodic steps");
    });
  });
  ApiDispatcher api(config, server, fleet_settings, db, metrics, clock, &fleet_metrics, &notifier, &key_cache, &heartbeats,
                    &ingest, &*secrets);
  api.SetBilling(&billing);
  AdminDispatcher admin(db, metrics, [&runtime] { return runtime.Draining(); });
  try {
    runtime.AddListener(server.api, api);
    if (server.api_tls) runtime.AddListener(*server.api_tls, api);
    runtime.AddListener(server.admin, admin);
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver: " << e.what() << "\n";
    return std::string(e.what()).rfind("tls.", 0) == 0 ? 2 : 1;
  }
  ingest.Start();
  steps.Start();
  webhook_steps.Start();
  log::Info("spillway-apiserver serving", {{"version", SPILLWAY_VERSION}});
  runtime.Run(server.shutdown_timeout);
  if (handover.joinable()) handover.join();
  webhook_steps.Stop();
  steps.Stop();
  ingest.Stop();
  notifier.Stop();
  heartbeats.Stop();
  db.Stop();
  log::Info("spillway-apiserver stopped");
  return 0;
}

}  // namespace spillway
