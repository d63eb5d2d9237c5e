#pragma once
// The agent's on-disk spool (docs/architecture.md, "Metering"): every sample is appended here,
// checksummed and fsync'd, before it counts as recorded; batches are cut from it, written down as
// the one pending batch before they are sent, and trimmed only once the server has answered 200.
//
// Layout of the directory:
//   seg-<n>.log   records, appended in order: "SPW1", u32 length, u32 CRC-32 of the payload, payload
//                 (JSON: {"through_ms": T, "samples": [...]}, one sampling tick of every GPU)
//   cursor        "<segment> <offset> <next_batch_seq>": where the unsent records begin
//   pending.json  the batch being sent (its batch_seq, samples and where it ends in the log)
//   quarantine/   batches the server refused (422), kept with its reason, never sent again
// kill -9 at any moment: a torn last record is detected by its length or checksum and dropped
// (logged); a pending batch is sent again with the same batch_seq (the server's ledger makes that
// a no-op if it was stored); the cursor moves only after an answer, so nothing recorded is lost or
// shipped twice.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "protocol/agent.hpp"

namespace spillway::agent {

struct SpoolOptions {
  std::string dir;
  std::int64_t max_bytes = 1LL << 30;      // beyond it the oldest unsent segment is dropped (logged, counted)
  std::int64_t segment_bytes = 4LL << 20;  // a new segment starts past this size
};

struct SpoolStats {
  std::int64_t bytes = 0;              // on disk, every segment
  std::int64_t unsent_samples = 0;     // recorded, not yet acknowledged by the server
  std::int64_t dropped_samples = 0;    // lost to max_bytes (since this process started)
  std::int64_t quarantined_batches = 0;
  std::int64_t torn_records = 0;       // dropped at open
};

class Spool {
 public:
  // Opens or creates the spool; nullptr with `why` when the directory cannot be used.
  static std::unique_ptr<Spool> Open(const SpoolOptions& options, std::string* why);
  ~Spool();

  // Appends one tick's samples and fsyncs: once it returns true they are recorded. `through` is
  // the tick's time: every sample with ts_ms <= it is in this record or an earlier one.
  bool Append(TimeMs through, const std::vector<protocol::Sample>& samples);
  // The batch to send now: the pending one again when its answer never came, else a new one cut
  // from the unsent records (whole records, up to about max_samples), written down as pending
  // before it is returned. nullopt when nothing is waiting.
  std::optional<protocol::SampleBatch> NextBatch(std::size_t max_samples);
  // The server stored the pending batch (200, a duplicate included): forget it, move past it.
  void Acknowledge();
  // The server refused the pending batch (422): keep it under quarantine/ with `reason`, move on.
  void Quarantine(const std::string& reason);
  // A spool that was empty when opened numbers its batches from here (the server's
  // next_batch_seq, told at registration), so an agent that lost its disk does not send batch
  // numbers the server already holds. A spool with history keeps its own numbering.
  void AdoptNextSeq(std::int64_t next_seq);
  std::int64_t next_seq() const;
  SpoolStats Stats() const;

 private:
  struct Impl;
  explicit Spool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// CRC-32 (IEEE 802.3), as the spool checksums records.
std::uint32_t Crc32(const void* data, std::size_t size);

}  // namespace spillway::agent
