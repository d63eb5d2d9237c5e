#pragma once
// Small durable-file helpers the agent's state directory and spool share.
#include <cstdint>
#include <optional>
#include <string>

#include <sys/types.h>

namespace spillway::agent {

// Writes `text` to `path` whole or not at all: a temporary file, fsync'd, renamed over `path`,
// and the folder fsync'd so the rename survives a crash.
bool WriteFileAtomically(const std::string& path, const std::string& text, mode_t mode = 0644);
// The file's bytes from offset `from` on; nullopt when it cannot be read.
std::optional<std::string> ReadFile(const std::string& path, std::int64_t from = 0);
// Writes all of `data` to `fd` (retrying short writes and EINTR); false on an error.
bool WriteAll(int fd, const std::string& data);
// fsync of a folder (after creating, renaming or removing a file in it).
bool FsyncDir(const std::string& dir);

}  // namespace spillway::agent
