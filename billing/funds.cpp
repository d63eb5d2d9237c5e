#include "billing/funds.hpp"

#include <boost/json.hpp>

#include <cstdint>

#include "billing/exact_amount.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/money.hpp"
#include "core/sql.hpp"
#include "webhooks/webhooks.hpp"

namespace spillway::billing {
namespace {

// Storage per GB-month at the storage price in effect at `at`, over the milliseconds of its month.
#define SPW_STORAGE_PRICE_AT(at)                                                                        \
  "(SELECT price_micros_per_gb_month FROM storage_prices WHERE effective_from <= " at                   \
  " ORDER BY effective_from DESC LIMIT 1)"
#define SPW_MONTH_MS(at)                                                                                \
  "(extract(epoch FROM (date_trunc('month', (" at ") AT TIME ZONE 'UTC') + interval '1 month') - "      \
  "date_trunc('month', (" at ") AT TIME ZONE 'UTC')) * 1000)"

const Statement kControls{"funds_controls", R"sql(
SELECT mode, )sql" SPW_EPOCH_MS("prepaid_since") R"sql( AS since_ms, monthly_limit_cents, low_alerted, empty_alerted,
       limit_warned_period, limit_reached_period
FROM spend_controls WHERE tenant_id = $1)sql"};
const Statement kControlled{"funds_controlled",
                            "SELECT tenant_id FROM spend_controls WHERE mode = 'prepaid' OR monthly_limit_cents IS NOT NULL "
                            "ORDER BY tenant_id FOR UPDATE"};
// Sums come back as numeric text and are read into 128 bits: none of them can overflow bigint here.
const Statement kCredits{"funds_credits",
                         "SELECT coalesce(sum(amount_cents), 0)::text AS cents FROM credit_ledger WHERE tenant_id = $1"};
// Serializes credits to one tenant (the total is checked against its ceiling).
const Statement kLockTenant{"funds_lock_tenant", "SELECT id FROM tenants WHERE id = $1 FOR UPDATE"};
// What a tenant's rated GPU time and metered storage cost from the hour of $2 on, in µ$. GPU time:
// the months that start at or after that hour from their kept sums (usage_rated_monthly), and the
// hours before the first of them, of the month $2 falls in, from the hourly rows: a prepaid balance
// costs one row per instance and price of each month since, not every hour since, and a month's
// spend (from its first hour) reads its sums alone.
#define SPW_SINCE_HOUR "date_trunc('hour', " SPW_TS(2) ")"
#define SPW_FIRST_WHOLE_MONTH                                                                            \
  "(CASE WHEN " SPW_SINCE_HOUR " = date_trunc('month', " SPW_TS(2) " AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' " \
  "THEN " SPW_SINCE_HOUR " ELSE (date_trunc('month', " SPW_TS(2) " AT TIME ZONE 'UTC') + interval '1 month') "   \
  "AT TIME ZONE 'UTC' END)"
const Statement kRatedSince{"funds_rated_since", R"sql(
SELECT coalesce((SELECT round(sum(gpu_ms::numeric * price) / 3600000)
                 FROM (SELECT gpu_ms, price_micros_per_gpu_hour AS price FROM usage_rated_monthly
                       WHERE tenant_id = $1 AND price_micros_per_gpu_hour IS NOT NULL
                         AND period >= to_char()sql" SPW_FIRST_WHOLE_MONTH R"sql( AT TIME ZONE 'UTC', 'YYYY-MM')
                       UNION ALL
                       SELECT gpu_ms, price_micros_per_gpu_hour FROM usage_rated_hourly
                       WHERE tenant_id = $1 AND price_micros_per_gpu_hour IS NOT NULL
                         AND hour >= )sql" SPW_SINCE_HOUR R"sql( AND hour < )sql" SPW_FIRST_WHOLE_MONTH R"sql() g), 0)::text
         AS gpu_micros,
       coalesce((SELECT round(sum(u.gb_ms::numeric * )sql" SPW_STORAGE_PRICE_AT("u.hour") " / " SPW_MONTH_MS("u.hour") R"sql())
                 FROM volume_usage_hourly u
                 WHERE u.tenant_id = $1 AND u.hour >= date_trunc('hour', )sql" SPW_TS(2) R"sql()), 0)::text AS storage_micros)sql"};
// What a tenant's live instances and volumes cost an hour at the prices in effect at $2, in µ$.
#define SPW_GPU_PRICE_NOW(market, region, model, at)                                                     \
  "CASE WHEN " market " = 'spot' THEN (SELECT s.price_micros_per_gpu_hour FROM spot_prices s WHERE s.region = " region \
  " AND s.gpu_model = " model " AND s.effective_from <= " at " ORDER BY s.effective_from DESC LIMIT 1) "              \
  "ELSE (SELECT p.price_micros_per_gpu_hour FROM prices p WHERE p.gpu_model = " model                                 \
  " AND p.market = 'on_demand' AND p.effective_from <= " at " ORDER BY p.effective_from DESC LIMIT 1) END"
const Statement kBurn{"funds_burn", R"sql(
SELECT coalesce((SELECT sum(i.gpus::bigint * )sql" SPW_GPU_PRICE_NOW("i.market", "i.region", "i.gpu_model", SPW_TS(2)) R"sql()
                 FROM instances i
                 WHERE i.tenant_id = $1 AND i.state IN ('provisioning', 'running', 'preempting')), 0)::bigint
     + coalesce((SELECT round(sum(v.size_gb::numeric) * )sql" SPW_STORAGE_PRICE_AT(SPW_TS(2)) " * 3600000 / " SPW_MONTH_MS(SPW_TS(2)) R"sql()
                 FROM volumes v WHERE v.tenant_id = $1 AND v.deleted_at IS NULL), 0)::bigint AS burn)sql"};
// Pending: per GPU hold of the tenant's instances, the time from the later of its start, its host's
// folded_through (every sample up to it is rated), the instance's last rated sample and now less
// metering.max_sample_age ($3 ms: older time can no longer be billed), to its release (or now),
// at the price in effect now; from $4 (prepaid_since's hour) and from $5 (the month's start), in µ$.
// Time before folded_through with no sample is not pending: it was never metered.
const Statement kPending{"funds_pending", R"sql(
WITH holds AS (
  SELECT )sql" SPW_EPOCH_MS("coalesce(h.released_at, " SPW_TS(2) ")") R"sql( AS until_ms,
         greatest()sql" SPW_EPOCH_MS("h.allocated_at") ", coalesce(" SPW_EPOCH_MS("w.folded_through") R"sql(, 0),
                  coalesce()sql" SPW_EPOCH_MS("u.last_at") R"sql(, 0), $2::bigint - $3::bigint) AS from_ms,
         coalesce()sql" SPW_GPU_PRICE_NOW("i.market", "i.region", "i.gpu_model", SPW_TS(2)) R"sql(, 0) AS price
  FROM instances i
  JOIN gpu_allocation_history h ON h.instance_id = i.id
  LEFT JOIN host_watermarks w ON w.host_id = h.host_id
  LEFT JOIN LATERAL (SELECT last_sample_at AS last_at FROM usage_hourly WHERE instance_id = i.id
                     ORDER BY hour DESC LIMIT 1) u ON true
  WHERE i.tenant_id = $1 AND (i.ended_at IS NULL OR i.ended_at > )sql" SPW_TS(2) R"sql( - $3::bigint * interval '1 millisecond')
    AND (h.released_at IS NULL OR h.released_at > )sql" SPW_TS(2) R"sql( - $3::bigint * interval '1 millisecond'))
SELECT coalesce(round(sum(greatest(0, least(until_ms, $2::bigint) - greatest(from_ms, $4::bigint))::numeric * price)
                      / 3600000), 0)::text AS since_micros,
       coalesce(round(sum(greatest(0, least(until_ms, $2::bigint) - greatest(from_ms, $5::bigint))::numeric * price)
                      / 3600000), 0)::text AS month_micros
FROM holds)sql"};
const Statement kLaunchBurn{"funds_launch_burn",
                            "SELECT coalesce($4::bigint * " SPW_GPU_PRICE_NOW("$3", "$2", "$1", SPW_TS(5)) ", 0)::bigint AS burn"};
const Statement kInsertCredit{"funds_insert_credit", R"sql(
INSERT INTO credit_ledger (id, tenant_id, amount_cents, reason, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, )sql" SPW_TS(6) ")"};
const Statement kCreditsOf{"funds_credits_of", R"sql(
SELECT id, tenant_id, amount_cents, reason, created_by, )sql" SPW_EPOCH_MS("created_at") R"sql( AS created_ms
FROM credit_ledger WHERE tenant_id = $1 ORDER BY created_at, id)sql"};
const Statement kSetMode{"funds_set_mode", R"sql(
INSERT INTO spend_controls (tenant_id, mode, prepaid_since, updated_at)
VALUES ($1, $2, CASE WHEN $2 = 'prepaid' THEN )sql" SPW_TS(3) R"sql( END, )sql" SPW_TS(3) R"sql()
ON CONFLICT (tenant_id) DO UPDATE SET mode = EXCLUDED.mode,
  prepaid_since = CASE WHEN EXCLUDED.mode = 'prepaid' THEN coalesce(spend_controls.prepaid_since, EXCLUDED.prepaid_since) END,
  low_alerted = false, empty_alerted = false, updated_at = EXCLUDED.updated_at)sql"};
const Statement kSetLimit{"funds_set_limit", R"sql(
INSERT INTO spend_controls (tenant_id, monthly_limit_cents, updated_at) VALUES ($1, nullif($2::bigint, 0), )sql" SPW_TS(3) R"sql()
ON CONFLICT (tenant_id) DO UPDATE SET monthly_limit_cents = EXCLUDED.monthly_limit_cents, limit_warned_period = NULL,
  limit_reached_period = NULL, updated_at = EXCLUDED.updated_at)sql"};
const Statement kSetFlags{"funds_set_flags", R"sql(
UPDATE spend_controls SET low_alerted = $2, empty_alerted = $3, limit_warned_period = nullif($4, ''),
  limit_reached_period = nullif($5, '') WHERE tenant_id = $1)sql"};

std::string Dollars(std::int64_t micros) { return FormatMicros(micros); }

// "2h 5m", "45s": a runway as people read it.
std::string Span(std::int64_t seconds) {
  if (seconds >= 3600) return std::to_string(seconds / 3600) + "h " + std::to_string(seconds % 3600 / 60) + "m";
  if (seconds >= 60) return std::to_string(seconds / 60) + "m " + std::to_string(seconds % 60) + "s";
  return std::to_string(seconds) + "s";
}

Int128 RatedSince(Tx& tx, const std::string& tenant_id, TimeMs since) {
  const auto r = tx.exec_prepared1(kRatedSince.name, tenant_id, EpochMs(since));
  return ParseWide(r["gpu_micros"].as<std::string>()) + ParseWide(r["storage_micros"].as<std::string>());
}

std::int64_t HourOf(TimeMs t) { return EpochMs(t) / kMsPerHour * kMsPerHour; }

}  // namespace

FundsSettings FundsSettings::From(const Config& config) {
  return {config.Duration("billing.low_balance_runway"), config.Duration("billing.min_launch_runway"),
          config.Duration("metering.max_sample_age")};
}

std::optional<std::int64_t> Funds::runway_seconds() const {
  if (mode != "prepaid" || burn_micros_per_hour <= 0) return std::nullopt;
  if (balance_micros() <= 0) return 0;
  return Clamp64(balance_micros() * 3600 / burn_micros_per_hour);
}

Funds FundsOf(Tx& tx, const std::string& tenant_id, TimeMs now, const FundsSettings& settings) {
  Funds f;
  f.tenant_id = tenant_id;
  const auto c = tx.exec_prepared(kControls.name, tenant_id);
  if (!c.empty()) {
    f.mode = c[0]["mode"].as<std::string>();
    f.prepaid_since = TimeFrom(c[0]["since_ms"]);
    f.monthly_limit_cents = IntFrom(c[0]["monthly_limit_cents"]);
    f.low_alerted = c[0]["low_alerted"].as<bool>();
    f.empty_alerted = c[0]["empty_alerted"].as<bool>();
    f.limit_warned_period = TextFrom(c[0]["limit_warned_period"]);
    f.limit_reached_period = TextFrom(c[0]["limit_reached_period"]);
  }
  f.credits_micros = ParseWide(tx.exec_prepared1(kCredits.name, tenant_id)["cents"].as<std::string>()) * kMicrosPerCent;
  const TimeMs month = MonthOf(now).begin;
  // Pending time counts from the hour rated usage is counted from: prepaid_since's (or, for the
  // limit alone, the month's).
  const std::int64_t since_ms = f.mode == "prepaid" && f.prepaid_since ? HourOf(*f.prepaid_since) : EpochMs(month);
  const auto p = tx.exec_prepared1(kPending.name, tenant_id, EpochMs(now), settings.max_sample_age.count(), since_ms,
                                   EpochMs(month));
  const Int128 pending_month = ParseWide(p["month_micros"].as<std::string>());
  if (f.mode == "prepaid" && f.prepaid_since) {
    f.pending_micros = ParseWide(p["since_micros"].as<std::string>());
    f.consumed_micros = RatedSince(tx, tenant_id, *f.prepaid_since) + f.pending_micros;
  }
  f.spent_this_month_micros = RatedSince(tx, tenant_id, month) + pending_month;
  f.burn_micros_per_hour = tx.exec_prepared1(kBurn.name, tenant_id, EpochMs(now))["burn"].as<std::int64_t>();
  return f;
}

Credit AddCredit(Tx& tx, const std::string& tenant_id, std::int64_t amount_cents, const std::string& reason,
                 const std::string& created_by, TimeMs now) {
  if (amount_cents <= 0 || amount_cents > kMaxAmountCents)
    throw InvalidInput("amount: a positive USD amount of at most " + FormatAmount(kMaxAmountCents));
  tx.exec_prepared(kLockTenant.name, tenant_id);
  const Int128 total = ParseWide(tx.exec_prepared1(kCredits.name, tenant_id)["cents"].as<std::string>());
  if (total + amount_cents > kMaxCreditTotalCents)
    throw InvalidInput("amount: the tenant's credits would add up to more than " + FormatAmount(kMaxCreditTotalCents) +
                       " (they are " + FormatMicrosWide(total * kMicrosPerCent) + " now)");
  Credit c{NewId("crd"), tenant_id, reason, created_by, amount_cents, now};
  tx.exec_prepared(kInsertCredit.name, c.id, tenant_id, amount_cents, reason, created_by, EpochMs(now));
  return c;
}

std::vector<Credit> CreditsOf(Tx& tx, const std::string& tenant_id) {
  std::vector<Credit> out;
  for (const auto& r : tx.exec_prepared(kCreditsOf.name, tenant_id))
    out.push_back({r["id"].as<std::string>(), r["tenant_id"].as<std::string>(), r["reason"].as<std::string>(),
                   r["created_by"].as<std::string>(), r["amount_cents"].as<std::int64_t>(), *TimeFrom(r["created_ms"])});
  return out;
}

void SetMode(Tx& tx, const std::string& tenant_id, const std::string& mode, TimeMs now) {
  if (mode != "prepaid" && mode != "postpaid") throw InvalidInput("mode: prepaid or postpaid");
  tx.exec_prepared(kSetMode.name, tenant_id, mode, EpochMs(now));
}

void SetMonthlyLimit(Tx& tx, const std::string& tenant_id, std::optional<std::int64_t> cents, TimeMs now) {
  if (cents && (*cents <= 0 || *cents > kMaxAmountCents))
    throw InvalidInput("monthly_limit: a positive USD amount of at most " + FormatAmount(kMaxAmountCents) + ", or null");
  tx.exec_prepared(kSetLimit.name, tenant_id, cents.value_or(0), EpochMs(now));
}

std::int64_t LaunchBurnMicros(Tx& tx, const std::string& gpu_model, const std::string& region, const std::string& market,
                              int gpus, TimeMs now) {
  return tx.exec_prepared1(kLaunchBurn.name, gpu_model, region, market, gpus, EpochMs(now))["burn"].as<std::int64_t>();
}

void CheckLaunchFunds(Tx& tx, const std::string& tenant_id, std::int64_t launch_burn_micros, TimeMs now,
                      const FundsSettings& settings) {
  // Most tenants are postpaid without a limit: one indexed lookup, and nothing to add up.
  const auto c = tx.exec_prepared(kControls.name, tenant_id);
  if (c.empty() || (c[0]["mode"].as<std::string>() == "postpaid" && c[0]["monthly_limit_cents"].is_null())) return;
  const Funds f = FundsOf(tx, tenant_id, now, settings);
  if (f.mode == "prepaid") {
    const Int128 balance = f.balance_micros();
    const std::int64_t burn = f.burn_micros_per_hour + launch_burn_micros;
    const std::int64_t runway = balance <= 0 ? 0 : burn <= 0 ? INT64_MAX : Clamp64(balance * 3600 / burn);
    const std::int64_t needed = std::chrono::duration_cast<std::chrono::seconds>(settings.min_launch_runway).count();
    if (runway < needed)
      throw ApiError(402, "insufficient_funds",
                     "the prepaid balance is $" + FormatMicrosWide(balance) + "; this launch would burn $" +
                         Dollars(launch_burn_micros) + " an hour (all running, $" + Dollars(burn) +
                         "), a runway of " + Span(runway) + ", under billing.min_launch_runway (" + Span(needed) +
                         "): add credit first");
  }
  if (f.monthly_limit_cents && f.spent_this_month_micros >= static_cast<Int128>(*f.monthly_limit_cents) * kMicrosPerCent)
    throw ApiError(402, "spend_limit_reached",
                   "this month's spend, $" + FormatMicrosWide(f.spent_this_month_micros) + ", reached the monthly limit of $" +
                       FormatAmount(*f.monthly_limit_cents) + "; this launch would burn $" +
                       Dollars(launch_burn_micros) + " an hour: raise the limit to launch");
}

std::vector<FundsVerdict> EvaluateFunds(Tx& tx, TimeMs now, const FundsSettings& settings) {
  std::vector<std::string> tenants;
  for (const auto& r : tx.exec_prepared(kControlled.name)) tenants.push_back(r["tenant_id"].as<std::string>());
  const std::string month = MonthOf(now).Label();
  const std::int64_t low = std::chrono::duration_cast<std::chrono::seconds>(settings.low_balance_runway).count();
  std::vector<FundsVerdict> out;
  for (const auto& t : tenants) {
    FundsVerdict v;
    v.funds = FundsOf(tx, t, now, settings);
    Funds& f = v.funds;
    bool low_alerted = f.low_alerted, empty_alerted = f.empty_alerted;
    std::string warned = f.limit_warned_period.value_or(""), reached = f.limit_reached_period.value_or("");
    const auto balance_event = [&](const char* threshold) {
      const auto runway = f.runway_seconds();
      v.events.emplace_back("balance.low", ToJson(boost::json::object{
                                               {"threshold", threshold},
                                               {"balance", FormatMicrosWide(f.balance_micros())},
                                               {"burn_per_hour", Dollars(f.burn_micros_per_hour)},
                                               {"runway_seconds", runway ? boost::json::value(*runway) : nullptr},
                                               {"low_balance_runway_seconds", low}}));
    };
    if (f.mode == "prepaid") {
      const auto runway = f.runway_seconds();
      if (f.balance_micros() <= 0) {
        if (!empty_alerted) balance_event("zero");
        empty_alerted = low_alerted = true;
        v.stop_reason = "insufficient_funds";
      } else if (runway && *runway < low) {
        if (!low_alerted) balance_event("runway");
        low_alerted = true;
        empty_alerted = false;
      } else {
        low_alerted = empty_alerted = false;
      }
    }
    if (f.monthly_limit_cents) {
      const Int128 limit = static_cast<Int128>(*f.monthly_limit_cents) * kMicrosPerCent, spent = f.spent_this_month_micros;
      const auto limit_event = [&](int percent) {
        v.events.emplace_back("spend_limit.reached",
                              ToJson(boost::json::object{{"threshold_percent", percent},
                                                         {"period", month},
                                                         {"monthly_limit", FormatAmount(*f.monthly_limit_cents)},
                                                         {"spent", FormatMicrosWide(spent)}}));
      };
      if (spent >= limit) {
        if (reached != month) limit_event(100);
        reached = warned = month;
        if (!v.stop_reason) v.stop_reason = "spend_limit";
      } else if (spent * 100 >= limit * 80) {
        if (warned != month) limit_event(80);
        warned = month;
      }
    }
    for (const auto& [type, data] : v.events) webhooks::Emit(tx, type, t, data, now);
    if (low_alerted != f.low_alerted || empty_alerted != f.empty_alerted || warned != f.limit_warned_period.value_or("") ||
        reached != f.limit_reached_period.value_or(""))
      tx.exec_prepared(kSetFlags.name, t, low_alerted, empty_alerted, warned, reached);
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace spillway::billing
