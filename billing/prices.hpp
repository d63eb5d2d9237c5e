#pragma once
// The price book: on-demand list prices (effective-dated) and the spot price history, each answered
// at a time — the price in effect at `at` — as rating will ask per sample. Provisioning's repricer
// computes spot prices and records them here; the catalog and placement read them from here.
#include "core/db_fwd.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/config.hpp"

namespace spillway {

// Micro-dollars per GPU-hour of the on-demand price in effect at `at`; nullopt when none was yet.
std::optional<std::int64_t> OnDemandPriceAt(Tx& tx, const std::string& gpu_model, TimeMs at);
// The pool's spot price in effect at `at`; nullopt when the pool had none yet.
std::optional<std::int64_t> SpotPriceAt(Tx& tx, const std::string& region,
                                        const std::string& gpu_model, TimeMs at);
// The pool's latest spot price (what a launch now pays).
std::optional<std::int64_t> CurrentSpotPrice(Tx& tx, const std::string& region,
                                             const std::string& gpu_model);

// One spot price and the inputs that produced it. Appended to the history (append-only); it takes
// effect at the database's clock_timestamp(), which orders the history as it was written.
struct SpotPriceRecord {
  std::string region, gpu_model;
  std::int64_t price_micros = 0, on_demand_micros = 0, spare_fraction_ppm = 0, target_micros = 0;
};
void RecordSpotPrice(Tx& tx, const SpotPriceRecord& price);

struct SpotPricePoint {
  SpotPriceRecord price;
  std::int64_t effective_from_us = 0;  // microseconds since the epoch: also the page cursor
};
struct SpotHistoryQuery {
  std::string region, gpu_model;  // "" = any
  std::int64_t since_us = 0;      // effective_from >= since
  // The page cursor: oldest first, effective_from > cursor; newest first, < cursor (0: none).
  std::int64_t cursor_us = 0;
  int limit = 100;
  bool newest_first = false;
};
// GET /v1/spot-prices.
std::vector<SpotPricePoint> SpotPriceHistory(Tx& tx, const SpotHistoryQuery& query);
// GET /v1/spot-prices/latest: each pool's price in effect now (filtered by region and model).
std::vector<SpotPricePoint> LatestSpotPrices(Tx& tx, const std::string& region,
                                             const std::string& gpu_model);

// Seeds the book from the config, effective `now`: a GPU model's on-demand price only when the book
// holds none for that model, the storage price only when it holds none. The book is finance's from
// then on: a restart never undoes a price set through the API. One replica at a time (an advisory
// lock). Returns how many prices were added.
int SeedPriceBook(Session& conn, const std::vector<OnDemandPrice>& prices, std::int64_t storage_micros_per_gb_month,
                  TimeMs now);

// The storage price per GB-month in effect at `at`; nullopt when none was yet.
std::optional<std::int64_t> StoragePriceAt(Tx& tx, TimeMs at);

// One price of the book: a GPU model's on-demand price per GPU-hour, or the storage price per GB-month.
struct PriceBookEntry {
  std::string gpu_model;  // "" for the storage price
  std::int64_t price_micros = 0;
  TimeMs effective_from{};
  bool storage() const { return gpu_model.empty(); }
};
// Every price of the book, past, in effect and scheduled: GPU models by name then time, storage last.
std::vector<PriceBookEntry> PriceBook(Tx& tx);
// The first price of `gpu_model` ("" for storage) taking effect after `now`, if one is scheduled.
std::optional<PriceBookEntry> NextPrice(Tx& tx, const std::string& gpu_model, TimeMs now);
// Adds `entry` to the book. False (nothing written) when that model, or storage, already has a
// price taking effect at that very time. The caller checks it is in the future.
bool SchedulePrice(Tx& tx, const PriceBookEntry& entry);

}  // namespace spillway
