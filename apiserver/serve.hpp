#pragma once
#include <string>

#include "core/config.hpp"

namespace spillway {

// The apiserver's commands; each returns the process exit code (0 done, 1 failed, 2 bad usage/config).
int RunMigrate(const Config& config);
int RunBootstrapAdmin(const Config& config);
// Seals every env value again under the newest key of secrets.key_file (rotation).
int RunRotateSecrets(const Config& config);
int RunServe(const Config& config);
// Recomputes every invoice of `period` (YYYY-MM) from stored usage and the price history and prints
// each mismatch: 0 none, 1 some (or the database failed), 2 bad usage.
int RunVerifyInvoices(const Config& config, const std::string& period);

}  // namespace spillway
