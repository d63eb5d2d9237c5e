#include "metering/volume_hours.hpp"

#include <optional>

#include "core/db.hpp"
#include "core/db_fwd.hpp"
#include "core/sql.hpp"

namespace spillway::metering {
namespace {

const Statement kVolumeMeteredThrough{"volume_metered_through", R"sql(
SELECT )sql" SPW_EPOCH_MS("coalesce((SELECT metered_through FROM volume_metering), "
                          "date_trunc('hour', (SELECT min(created_at) FROM volumes)))") R"sql( AS through_ms)sql"};
// One hour: each volume that existed in it, for the part of it that it existed.
const Statement kMeterVolumeHour{"meter_volume_hour", R"sql(
INSERT INTO volume_usage_hourly (hour, volume_id, tenant_id, gb_ms)
SELECT h, v.id, v.tenant_id,
       v.size_gb::bigint * (extract(epoch FROM least(coalesce(v.deleted_at, h + interval '1 hour'), h + interval '1 hour')
                                             - greatest(v.created_at, h)) * 1000)::bigint
FROM volumes v, to_timestamp($1::bigint / 1000.0) AS h
WHERE v.created_at < h + interval '1 hour' AND (v.deleted_at IS NULL OR v.deleted_at > h)
ON CONFLICT (hour, volume_id) DO UPDATE SET gb_ms = EXCLUDED.gb_ms)sql"};
const Statement kSetVolumeMetered{"set_volume_metered", R"sql(
INSERT INTO volume_metering (id, metered_through) VALUES (true, to_timestamp($1::bigint / 1000.0))
ON CONFLICT (id) DO UPDATE SET metered_through = EXCLUDED.metered_through)sql"};

}  // namespace

int MeterVolumeHours(pqxx::connection& conn, TimeMs now) {
  constexpr std::int64_t kHourMs = 3'600'000;
  const std::int64_t closed = EpochMs(now) / kHourMs * kHourMs;  // the start of the current hour
  std::optional<std::int64_t> through;
  {
    pqxx::read_transaction tx(conn, "volume_metering_plan");
    const auto f = tx.exec_prepared1(kVolumeMeteredThrough.name)["through_ms"];
    if (!f.is_null()) through = f.as<std::int64_t>();
  }
  if (!through) return 0;  // no volume yet
  int hours = 0;
  for (std::int64_t h = *through; h + kHourMs <= closed && hours < 24 * 31; h += kHourMs, ++hours)
    InTransaction(conn, [&](Tx& tx) {
      tx.exec_prepared(kMeterVolumeHour.name, h);
      tx.exec_prepared(kSetVolumeMetered.name, h + kHourMs);
    });
  return hours;
}

}  // namespace spillway::metering
