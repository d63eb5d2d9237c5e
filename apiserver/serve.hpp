#pragma once
#include "core/config.hpp"

namespace spillway {

// The apiserver's commands; each returns the process exit code (0 done, 1 failed, 2 bad usage/config).
int RunMigrate(const Config& config);
int RunBootstrapAdmin(const Config& config);
int RunServe(const Config& config);

}  // namespace spillway
