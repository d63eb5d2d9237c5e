#include "provisioning/volumes.hpp"

#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

#define SPW_VOLUME_COLUMNS \
  "id, tenant_id, name, region, size_gb, attached_instance_id, " SPW_EPOCH_MS("created_at") " AS created_ms"

const Statement kVolumeRegionKnown{"volume_region_known", "SELECT EXISTS (SELECT 1 FROM hosts WHERE region = $1) AS known"};
const Statement kInsertVolume{"insert_volume", R"sql(
INSERT INTO volumes (id, tenant_id, name, region, size_gb, created_at)
VALUES ($1, $2, $3, $4, $5, to_timestamp($6::bigint / 1000.0))
ON CONFLICT DO NOTHING
RETURNING )sql" SPW_VOLUME_COLUMNS};
const Statement kGetVolume{"get_volume", "SELECT " SPW_VOLUME_COLUMNS " FROM volumes "
                                         "WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"};
const Statement kLockVolume{"lock_volume", "SELECT " SPW_VOLUME_COLUMNS " FROM volumes "
                                           "WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE"};
const Statement kListVolumes{"list_volumes", "SELECT " SPW_VOLUME_COLUMNS " FROM volumes WHERE tenant_id = $1 "
                                             "AND id > $2 AND deleted_at IS NULL ORDER BY id LIMIT $3"};
const Statement kDeleteVolume{"delete_volume",
                              "UPDATE volumes SET deleted_at = to_timestamp($3::bigint / 1000.0) "
                              "WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"};
Volume VolumeFrom(const pqxx::row& r) {
  return {r["id"].as<std::string>(),     r["tenant_id"].as<std::string>(),
          r["name"].as<std::string>(),   r["region"].as<std::string>(),
          r["size_gb"].as<int>(),        TextFrom(r["attached_instance_id"]),
          *TimeFrom(r["created_ms"])};
}

}  // namespace

Volume CreateVolume(Tx& tx, const std::string& tenant_id, const std::string& name, const std::string& region,
                    int size_gb, TimeMs now) {
  if (!tx.exec_prepared1(kVolumeRegionKnown.name, region)["known"].as<bool>())
    throw ApiError(422, "validation_failed", "region: unknown region " + region);
  const auto rows = tx.exec_prepared(kInsertVolume.name, NewId("vol"), tenant_id, name, region, size_gb, EpochMs(now));
  if (rows.empty()) throw ApiError(409, "volume_exists", "a volume named \"" + name + "\" exists already");
  return VolumeFrom(rows[0]);
}

std::optional<Volume> FindVolume(Tx& tx, const std::string& tenant_id, const std::string& id) {
  const auto rows = tx.exec_prepared(kGetVolume.name, tenant_id, id);
  if (rows.empty()) return std::nullopt;
  return VolumeFrom(rows[0]);
}

std::vector<Volume> ListVolumes(Tx& tx, const std::string& tenant_id, const std::string& after, int limit) {
  std::vector<Volume> out;
  for (const auto& r : tx.exec_prepared(kListVolumes.name, tenant_id, after, limit)) out.push_back(VolumeFrom(r));
  return out;
}

std::optional<Volume> DeleteVolume(Tx& tx, const std::string& tenant_id, const std::string& id, TimeMs now) {
  const auto rows = tx.exec_prepared(kLockVolume.name, tenant_id, id);
  if (rows.empty()) return std::nullopt;
  Volume v = VolumeFrom(rows[0]);
  if (v.attached_instance_id)
    throw ApiError(409, "volume_attached",
                   "volume " + v.name + " is attached to instance " + *v.attached_instance_id + ": terminate it first");
  tx.exec_prepared(kDeleteVolume.name, tenant_id, id, EpochMs(now));
  return v;
}

}  // namespace spillway
