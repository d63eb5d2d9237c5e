#pragma once
// Prepaid balances and spend limits (docs/architecture.md, "Prepaid balances and spend limits"). A
// prepaid tenant's balance is the credit finance added (an append-only ledger) less everything rated
// since it became prepaid (GPU time and storage, before tax), as current as the metering fold; its
// burn rate is what its live instances and volumes cost an hour at today's prices, and its runway
// the balance at that rate. A monthly spend limit caps what a tenant's month rates. The leader's
// spend_controls step (apiserver/billing_steps) evaluates them after each fold; a launch checks
// them first. Money in micro-dollars, no floating point.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"
#include "billing/exact_amount.hpp"

namespace spillway::billing {

struct FundsSettings {
  Millis low_balance_runway{std::chrono::hours(24)};  // billing.low_balance_runway
  Millis min_launch_runway{std::chrono::hours(1)};    // billing.min_launch_runway
  // metering.max_sample_age: a hold's unreported time older than this can never be billed, so it is
  // pending no longer (it is unmetered held time).
  Millis max_sample_age{std::chrono::hours(168)};
  static FundsSettings From(const Config& config);
};

struct Funds {
  std::string tenant_id;
  std::string mode = "postpaid";  // postpaid | prepaid
  std::optional<TimeMs> prepaid_since;
  // Sums are 128 bits: a ledger of maximal credits, or years of usage at the largest tenant-month
  // billing/exact_amount.hpp is written for, never wraps.
  Int128 credits_micros = 0;   // Σ the ledger
  Int128 consumed_micros = 0;  // rated and pending since prepaid_since (prepaid only)
  Int128 pending_micros = 0;   // of consumed: held GPU time not yet rated, at today's price
  Int128 balance_micros() const { return credits_micros - consumed_micros; }
  std::int64_t burn_micros_per_hour = 0;  // live instances and volumes, at today's prices
  // Seconds a prepaid balance lasts at the burn rate (0 when it is spent; nullopt when nothing burns,
  // or for a postpaid tenant, which has no balance to run down).
  std::optional<std::int64_t> runway_seconds() const;
  std::optional<std::int64_t> monthly_limit_cents;
  Int128 spent_this_month_micros = 0;  // rated and pending in the current UTC month
  // The alert state (once per crossing).
  bool low_alerted = false, empty_alerted = false;
  std::optional<std::string> limit_warned_period, limit_reached_period;
};

// A tenant's funds now (a tenant never set up is postpaid with no limit).
Funds FundsOf(Tx& tx, const std::string& tenant_id, TimeMs now, const FundsSettings& settings = {});

struct Credit {
  std::string id, tenant_id, reason, created_by;
  std::int64_t amount_cents = 0;
  TimeMs created_at{};
};
// The largest sum of one tenant's credits (kMaxAmountCents each): a credit past it is refused.
inline constexpr std::int64_t kMaxCreditTotalCents = kMaxAmountCents;
// Adds a credit (1 cent to kMaxAmountCents); InvalidInput ("amount: …") when the tenant's credits
// would pass kMaxCreditTotalCents.
Credit AddCredit(Tx& tx, const std::string& tenant_id, std::int64_t amount_cents, const std::string& reason,
                 const std::string& created_by, TimeMs now);
std::vector<Credit> CreditsOf(Tx& tx, const std::string& tenant_id);
// Prepaid from now (rated usage from this hour on spends credit), or postpaid again.
void SetMode(Tx& tx, const std::string& tenant_id, const std::string& mode, TimeMs now);
// A monthly limit in cents, or none; a limit above what the month has spent lifts a stop.
void SetMonthlyLimit(Tx& tx, const std::string& tenant_id, std::optional<std::int64_t> cents, TimeMs now);

// What launching `gpus` GPUs of `gpu_model` in `region` on `market` burns an hour now, in µ$.
std::int64_t LaunchBurnMicros(Tx& tx, const std::string& gpu_model, const std::string& region, const std::string& market,
                              int gpus, TimeMs now);
// Refuses a launch (ApiError 402) for a prepaid tenant whose runway with it would be shorter than
// settings.min_launch_runway (insufficient_funds), or a tenant whose month reached its limit
// (spend_limit_reached); the message says the balance (or the spend) and the launch's burn.
void CheckLaunchFunds(Tx& tx, const std::string& tenant_id, std::int64_t launch_burn_micros, TimeMs now,
                      const FundsSettings& settings);

// What the spend_controls step found for one tenant: the alerts to send now (each marked sent) and
// whether to stop its instances (and why: insufficient_funds or spend_limit).
struct FundsVerdict {
  Funds funds;
  std::vector<std::pair<std::string, std::string>> events;  // (type, data JSON) to emit
  std::optional<std::string> stop_reason;
};
// Evaluates every tenant that is prepaid or has a limit, in `tx`: sends each alert once per
// crossing (writing the events to the webhook outbox and the flags), and says whom to stop.
std::vector<FundsVerdict> EvaluateFunds(Tx& tx, TimeMs now, const FundsSettings& settings);

}  // namespace spillway::billing
