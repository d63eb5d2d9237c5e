#include "billing/steps.hpp"

#include <boost/json.hpp>

#include <algorithm>

#include "accounts/audit.hpp"
#include "billing/funds.hpp"
#include "core/db.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "core/money.hpp"
#include "core/periodic.hpp"
#include "metering/usage.hpp"
#include "provisioning/instances.hpp"
#include "webhooks/webhooks.hpp"

namespace spillway::billing {

void Steps::Register(PeriodicSteps& steps, Millis draft_interval) {
  // Each body counts its own failure, then rethrows so the controller counts and logs it too.
  const auto counted = [this](const char* name, auto body) {
    return [this, name, body](pqxx::connection& c, const StepContext& s) {
      try {
        body(c, s.now);
      } catch (...) {
        observer_.Failed(name);
        throw;
      }
    };
  };
  steps.Add({"billing_drafts", draft_interval,
             counted("billing_drafts", [this](pqxx::connection& c, TimeMs now) { Drafts(c, now); })});
  steps.Add({"billing_close", std::chrono::minutes(1),
             counted("billing_close", [this](pqxx::connection& c, TimeMs now) { CloseDue(c, now); })});
  // Right after each fold (registered after it, at the same interval): a balance is as current as
  // the rated usage, so an empty one is stopped within a sample and a rating interval.
  steps.Add({"spend_controls", draft_interval,
             counted("spend_controls", [this](pqxx::connection& c, TimeMs now) { SpendControls(c, now); })});
  steps.Add({"billing_unmetered", std::chrono::seconds(15),
             counted("billing_unmetered", [this](pqxx::connection& c, TimeMs) { Unmetered(c); })});
  steps.Add({"billing_gauges", std::chrono::seconds(15),
             counted("billing_gauges", [this](pqxx::connection& c, TimeMs now) { Gauges(c, now); })});
}

void Steps::Drafts(Session& conn, TimeMs now) { observer_.Billed(DraftInvoices(conn, now, settings_)); }

int Steps::CloseDue(Session& conn, TimeMs now) {
  std::vector<Month> due;
  {
    pqxx::read_transaction tx(conn, "billing_close_plan");
    due = PeriodsToClose(tx, now);
  }
  int closed = 0;
  for (const Month& month : due) {
    const bool ready = InTransaction(conn, [&](Tx& tx) { return ReadinessOf(tx, month).ready(); });
    if (!ready && now < month.end + settings_.close_max_wait) break;  // in order: wait for this one
    const auto start = std::chrono::steady_clock::now();
    const PeriodClose c =
        InTransaction(conn, [&](Tx& tx) { return ClosePeriod(tx, month, now, settings_, "system"); });
    observer_.Closed(c, std::chrono::steady_clock::now() - start);
    ++closed;
  }
  return closed;
}

int Steps::SpendControls(Session& conn, TimeMs now) {
  const auto verdicts = InTransaction(conn, [&](Tx& tx) { return EvaluateFunds(tx, now, settings_.funds); });
  Int128 sum = 0, min = 0;
  std::int64_t low = 0;
  bool any = false;
  const std::int64_t low_runway = std::chrono::duration_cast<std::chrono::seconds>(settings_.funds.low_balance_runway).count();
  for (const auto& v : verdicts) {
    if (v.funds.mode != "prepaid") continue;
    const Int128 b = v.funds.balance_micros();
    sum += b;
    min = any ? std::min(min, b) : b;
    any = true;
    const auto runway = v.funds.runway_seconds();
    if (b <= 0 || (runway && *runway < low_runway)) ++low;
  }
  observer_.Balances(sum, min, low);
  int stopped = 0;
  for (const auto& v : verdicts) {
    if (!v.stop_reason) continue;
    std::vector<std::string> ids;
    {
      pqxx::nontransaction read(conn);
      ids = InstancesToStop(read, v.funds.tenant_id);
    }
    for (const auto& id : ids) {
      const bool done = InTransaction(conn, [&](Tx& tx) {
        const auto out = TerminateInstance(tx, id, v.funds.tenant_id, *v.stop_reason, now);
        if (!out || !out->changed) return false;
        EndBillingNow(tx, id);  // billed up to this decision, whether or not its host can hear it
        RecordAudit(tx, SystemAudit(v.funds.tenant_id, "instance.terminate", id + " " + *v.stop_reason));
        webhooks::Emit(tx, "instance.stopped_for_funds", v.funds.tenant_id,
                       ToJson(boost::json::object{{"instance_id", id},
                                                  {"reason", *v.stop_reason},
                                                  {"balance", FormatMicrosWide(v.funds.balance_micros())},
                                                  {"spent_this_month", FormatMicrosWide(v.funds.spent_this_month_micros)}}),
                       now);
        return true;
      });
      if (!done) continue;
      observer_.StoppedForFunds(*v.stop_reason);
      ++stopped;
      log::Info("instance stopped for funds", {{"tenant_id", v.funds.tenant_id}, {"instance_id", id}, {"reason", *v.stop_reason}});
    }
  }
  return stopped;
}

void Steps::Unmetered(Session& conn) {
  constexpr int kHostsAPass = 2000;  // each host at most 24 hours a pass: a pass stays short
  for (const auto& j : metering::JudgeUnmeteredHours(conn, kHostsAPass, settings_.bill_unmetered_held_time)) {
    observer_.Judged(j.region, j.gpu_model, j.held_gpu_ms, j.unmetered_gpu_ms);
    if (j.unmetered_gpu_ms > 0)
      log::Info(settings_.bill_unmetered_held_time ? "held GPU time never metered (billed: billing.unmetered_held_time)"
                                                   : "held GPU time never metered (not billed)",
                {{"region", j.region}, {"gpu_model", j.gpu_model}, {"unmetered_gpu_seconds", j.unmetered_gpu_ms / 1000},
                 {"held_gpu_seconds", j.held_gpu_ms / 1000}});
  }
}

void Steps::Gauges(Session& conn, TimeMs now) {
  pqxx::read_transaction tx(conn, "billing_gauges");
  const BillingGauges g = ReadBillingGauges(tx);
  observer_.Invoices(g.drafts, g.finalized,
                     g.oldest_mark ? std::optional(std::max(Millis(0), std::chrono::duration_cast<Millis>(now - *g.oldest_mark)))
                                   : std::nullopt);
}

}  // namespace spillway::billing
