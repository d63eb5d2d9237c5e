#pragma once
// Volumes (the store): a tenant's storage in a region. Their hourly GB metering is metering's (metering/volume_hours).

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

}  // namespace spillway
