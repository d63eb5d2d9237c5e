#pragma once
// Volumes (the store and their hourly GB metering): a tenant's storage in a region.
#include <pqxx/pqxx>

#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway {

struct Volume {
  std::string id, tenant_id, name, region;
  int size_gb = 0;
  std::optional<std::string> attached_instance_id;
  TimeMs created_at{};
};

// Creates a volume; ApiError 422 for a region no host serves, 409 volume_exists for a name in use.
Volume CreateVolume(Tx& tx, const std::string& tenant_id, const std::string& name, const std::string& region,
                    int size_gb, TimeMs now);
std::optional<Volume> FindVolume(Tx& tx, const std::string& tenant_id, const std::string& id);
std::vector<Volume> ListVolumes(Tx& tx, const std::string& tenant_id, const std::string& after, int limit);
// Deletes a detached volume (its data goes); ApiError 409 volume_attached while an instance holds
// it. nullopt when the tenant has no such volume.
std::optional<Volume> DeleteVolume(Tx& tx, const std::string& tenant_id, const std::string& id, TimeMs now);

// Meters every closed hour since the last run: GB-milliseconds per volume and hour (a volume
// counts from its creation to its deletion). Returns the hours metered.
int MeterVolumeHours(pqxx::connection& conn, TimeMs now);

}  // namespace spillway
