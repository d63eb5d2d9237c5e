#include "agent/spool.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "core/log.hpp"
#include "agent/files.hpp"

namespace spillway::agent {
namespace json = boost::json;

std::uint32_t Crc32(const void* data, std::size_t size) {
  static const auto kTable = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) crc = kTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

namespace {

constexpr char kMagic[4] = {'S', 'P', 'W', '1'};
constexpr std::size_t kHeader = 12;
constexpr std::uint32_t kMaxRecord = 64u << 20;

struct Pos {
  std::int64_t seg = 1, off = 0;
  auto operator<=>(const Pos&) const = default;
};

struct Record {
  TimeMs through{};
  std::vector<protocol::Sample> samples;
  std::int64_t end = 0;  // offset just past it
};

std::string SegName(const std::string& dir, std::int64_t seg) {
  char name[64];
  std::snprintf(name, sizeof name, "/seg-%012lld.log", static_cast<long long>(seg));
  return dir + name;
}

void PutU32(std::string& s, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}
std::uint32_t GetU32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

std::int64_t FileSize(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::int64_t>(st.st_size) : -1;
}

// Records of `data` (read from file offset `base`) until the end or the first bad one; *bad_at is
// the offset of a bad record (-1 when none).
std::vector<Record> Parse(const std::string& data, std::int64_t base, std::int64_t* bad_at) {
  std::vector<Record> out;
  *bad_at = -1;
  std::size_t p = 0;
  while (p < data.size()) {
    if (data.size() - p < kHeader || std::memcmp(data.data() + p, kMagic, 4) != 0) break;
    const std::uint32_t len = GetU32(data.data() + p + 4), crc = GetU32(data.data() + p + 8);
    if (len > kMaxRecord || data.size() - p - kHeader < len) break;
    const char* payload = data.data() + p + kHeader;
    if (Crc32(payload, len) != crc) break;
    try {
      const auto v = json::parse(json::string_view(payload, len));
      Record r;
      r.through = FromEpochMs(v.at("through_ms").to_number<std::int64_t>());
      for (const auto& s : v.at("samples").as_array()) r.samples.push_back(protocol::ParseSample(s));
      p += kHeader + len;
      r.end = base + static_cast<std::int64_t>(p);
      out.push_back(std::move(r));
    } catch (const std::exception&) {
      break;
    }
  }
  if (p < data.size()) *bad_at = base + static_cast<std::int64_t>(p);
  return out;
}

}  // namespace

struct Spool::Impl {
  SpoolOptions o;
  mutable std::mutex mu;
  std::map<std::int64_t, std::int64_t> segments;  // segment -> size
  int fd = -1;                                    // the last segment, for appending
  Pos cursor;
  std::int64_t next_seq = 0;
  bool opened_fresh = false;  // no cursor file was found at open: nothing had been recorded here
  struct Pending {
    protocol::SampleBatch batch;
    Pos end;
  };
  std::optional<Pending> pending;
  SpoolStats stats;

  std::int64_t Active() const { return segments.rbegin()->first; }

  bool SaveCursor() {
    return WriteFileAtomically(o.dir + "/cursor", std::to_string(cursor.seg) + " " + std::to_string(cursor.off) + " " +
                                                std::to_string(next_seq) + "\n");
  }

  bool OpenActive(std::int64_t seg) {
    if (fd >= 0) ::close(fd);
    const std::string path = SegName(o.dir, seg);
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    if (!segments.count(seg)) {
      segments[seg] = 0;
      FsyncDir(o.dir);
    }
    return true;
  }

  // Unsent records from `from` on, at most about max_samples of them (whole records).
  std::vector<Record> ReadFrom(Pos from, std::size_t max_samples, Pos* end) const {
    std::vector<Record> out;
    std::size_t n = 0;
    *end = from;
    for (auto it = segments.lower_bound(from.seg); it != segments.end() && n < max_samples; ++it) {
      const std::int64_t off = it->first == from.seg ? from.off : 0;
      if (off >= it->second) continue;
      const auto data = ReadFile(SegName(o.dir, it->first), off);
      if (!data) break;
      std::int64_t bad = -1;
      auto records = Parse(data->substr(0, static_cast<std::size_t>(it->second - off)), off, &bad);
      if (bad >= 0)
        log::Error("spool: an unreadable record mid-segment; the rest of that segment is skipped",
                   {{"segment", SegName(o.dir, it->first)}, {"offset", bad}});
      std::size_t taken = 0;
      for (auto& r : records) {
        if (n >= max_samples && !out.empty()) break;
        n += r.samples.size();
        *end = {it->first, r.end};
        out.push_back(std::move(r));
        ++taken;
      }
      // Past every good record of the segment: step over the unreadable rest of it too.
      if (bad >= 0 && taken == records.size()) *end = {it->first, it->second};
    }
    return out;
  }

  std::int64_t CountFrom(Pos from) const {
    Pos end;
    std::int64_t n = 0;
    for (const auto& r : ReadFrom(from, SIZE_MAX, &end)) n += static_cast<std::int64_t>(r.samples.size());
    return n;
  }

  Pos SendFrom() const { return pending && cursor < pending->end ? pending->end : cursor; }

  void DropOldestWhileOver() {
    auto total = [&] {
      std::int64_t b = 0;
      for (const auto& [s, size] : segments) b += size;
      return b;
    };
    while (total() > o.max_bytes && segments.size() > 1) {
      const std::int64_t oldest = segments.begin()->first;
      const Pos from = std::max(SendFrom(), Pos{oldest, 0});
      std::int64_t lost = 0;
      if (from.seg == oldest) {
        std::int64_t bad = -1;
        if (const auto data = ReadFile(SegName(o.dir, oldest), from.off))
          for (const auto& r : Parse(*data, from.off, &bad)) lost += static_cast<std::int64_t>(r.samples.size());
      }
      ::unlink(SegName(o.dir, oldest).c_str());
      segments.erase(oldest);
      if (cursor.seg <= oldest) {
        cursor = {segments.begin()->first, 0};
        SaveCursor();
      }
      stats.dropped_samples += lost;
      stats.unsent_samples -= lost;
      if (lost > 0)
        log::Error("spool over its size limit: the oldest unsent samples are dropped",
                   {{"samples", lost}, {"max_bytes", o.max_bytes}});
    }
  }

  void TrimShipped() {
    while (segments.size() > 1 && segments.begin()->first < cursor.seg) {
      ::unlink(SegName(o.dir, segments.begin()->first).c_str());
      segments.erase(segments.begin());
    }
  }

  void Advance() {
    const Pos end = pending->end;
    if (cursor < end) cursor = end;
    if (!segments.count(cursor.seg)) cursor = {segments.lower_bound(cursor.seg)->first, 0};
    next_seq = pending->batch.batch_seq + 1;
    stats.unsent_samples -= static_cast<std::int64_t>(pending->batch.samples.size());
    pending.reset();
    SaveCursor();
    ::unlink((o.dir + "/pending.json").c_str());
    TrimShipped();
  }
};

Spool::Spool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Spool::~Spool() {
  if (impl_ && impl_->fd >= 0) ::close(impl_->fd);
}

std::unique_ptr<Spool> Spool::Open(const SpoolOptions& options, std::string* why) {
  auto m = std::make_unique<Impl>();
  m->o = options;
  const std::string& dir = options.dir;
  for (const std::string& d : {dir, dir + "/quarantine"})
    if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) {
      *why = d + ": " + std::strerror(errno);
      return nullptr;
    }
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      long long seg = 0;
      char tail[8] = {0};
      if (std::sscanf(e->d_name, "seg-%lld.%4s", &seg, tail) == 2 && std::string(tail) == "log")
        m->segments[seg] = FileSize(SegName(dir, seg));
    }
    ::closedir(d);
  }
  if (const auto cursor = ReadFile(dir + "/cursor")) {
    long long seg = 0, off = 0, seq = 0;
    if (std::sscanf(cursor->c_str(), "%lld %lld %lld", &seg, &off, &seq) != 3) {
      *why = dir + "/cursor: unreadable";
      return nullptr;
    }
    m->cursor = {seg, off};
    m->next_seq = seq;
  } else {
    m->opened_fresh = true;
    m->cursor = {m->segments.empty() ? 1 : m->segments.begin()->first, 0};
  }
  if (const auto pending = ReadFile(dir + "/pending.json")) {
    try {
      const auto v = json::parse(*pending);
      Impl::Pending p{protocol::ParseSampleBatch(v.at("batch")),
                      {v.at("end_segment").to_number<std::int64_t>(), v.at("end_offset").to_number<std::int64_t>()}};
      if (p.batch.batch_seq >= m->next_seq) m->pending = std::move(p);
      else ::unlink((dir + "/pending.json").c_str());  // acknowledged; the crash came before its removal
    } catch (const std::exception& e) {
      // Written atomically, so this is not a torn write; keep it for a person to look at.
      ::rename((dir + "/pending.json").c_str(), (dir + "/quarantine/unreadable-pending.json").c_str());
      log::Error("spool: the pending batch is unreadable and was set aside", {{"error", e.what()}});
    }
  }
  // A torn last record (the agent was killed mid-append): drop it.
  if (!m->segments.empty()) {
    const std::int64_t last = m->segments.rbegin()->first;
    const std::string path = SegName(dir, last);
    const auto data = ReadFile(path);
    if (!data) {
      *why = path + ": cannot read: " + std::strerror(errno);
      return nullptr;
    }
    {
      std::int64_t bad = -1;
      Parse(*data, 0, &bad);
      if (bad >= 0) {
        if (::truncate(path.c_str(), bad) != 0) {
          *why = path + ": cannot drop a torn record: " + std::strerror(errno);
          return nullptr;
        }
        m->segments[last] = bad;
        ++m->stats.torn_records;
        log::Warn("spool: a torn last record was dropped (the agent stopped while writing it)",
                  {{"segment", path}, {"offset", bad}, {"bytes", static_cast<std::int64_t>(data->size()) - bad}});
      }
    }
  }
  m->TrimShipped();
  const std::int64_t active = m->segments.empty() ? m->cursor.seg : m->segments.rbegin()->first;
  if (!m->OpenActive(active)) {
    *why = SegName(dir, active) + ": " + std::strerror(errno);
    return nullptr;
  }
  if (!m->segments.count(m->cursor.seg)) m->cursor = {m->segments.lower_bound(m->cursor.seg)->first, 0};
  if (m->opened_fresh && !m->SaveCursor()) {
    *why = dir + "/cursor: cannot write";
    return nullptr;
  }
  m->stats.unsent_samples = m->CountFrom(m->SendFrom()) +
                            (m->pending ? static_cast<std::int64_t>(m->pending->batch.samples.size()) : 0);
  return std::unique_ptr<Spool>(new Spool(std::move(m)));
}

bool Spool::Append(TimeMs through, const std::vector<protocol::Sample>& samples) {
  json::array list;
  list.reserve(samples.size());
  for (const auto& s : samples) list.push_back(protocol::ToJson(s));
  const std::string payload =
      json::serialize(json::object{{"through_ms", EpochMs(through)}, {"samples", std::move(list)}});
  std::string record(kMagic, 4);
  PutU32(record, static_cast<std::uint32_t>(payload.size()));
  PutU32(record, Crc32(payload.data(), payload.size()));
  record += payload;
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  const std::int64_t active = m.Active();
  if (!WriteAll(m.fd, record) || ::fdatasync(m.fd) != 0) {
    log::Error("spool: cannot record samples", {{"error", std::strerror(errno)}});
    // What was written of the record is torn: cut it off so that later records stay readable.
    if (::ftruncate(m.fd, m.segments[active]) != 0) m.OpenActive(active);
    return false;
  }
  m.segments[active] += static_cast<std::int64_t>(record.size());
  m.stats.unsent_samples += static_cast<std::int64_t>(samples.size());
  if (m.segments[active] >= m.o.segment_bytes) m.OpenActive(active + 1);
  m.DropOldestWhileOver();
  return true;
}

std::optional<protocol::SampleBatch> Spool::NextBatch(std::size_t max_samples) {
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  if (m.pending) return m.pending->batch;
  Pos end;
  auto records = m.ReadFrom(m.cursor, max_samples, &end);
  if (records.empty()) {
    if (m.cursor < end) {  // only unreadable bytes: step over them
      m.cursor = end;
      m.SaveCursor();
    }
    return std::nullopt;
  }
  protocol::SampleBatch batch;
  batch.batch_seq = m.next_seq;
  for (auto& r : records) {
    batch.sampled_through_ms = std::max(batch.sampled_through_ms, r.through);
    for (auto& s : r.samples) batch.samples.push_back(std::move(s));
  }
  const std::string text = json::serialize(json::object{
      {"batch", protocol::ToJson(batch)}, {"end_segment", end.seg}, {"end_offset", end.off}});
  if (!WriteFileAtomically(m.o.dir + "/pending.json", text, 0600)) {
    log::Error("spool: cannot write the pending batch", {{"error", std::strerror(errno)}});
    return std::nullopt;
  }
  m.pending = Impl::Pending{batch, end};
  return batch;
}

void Spool::Acknowledge() {
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  if (m.pending) m.Advance();
}

void Spool::Quarantine(const std::string& reason) {
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  if (!m.pending) return;
  const std::string name = "quarantine/batch-" + std::to_string(m.pending->batch.batch_seq) + ".json";
  WriteFileAtomically(m.o.dir + "/" + name,
                  json::serialize(json::object{{"reason", reason}, {"batch", protocol::ToJson(m.pending->batch)}}));
  ++m.stats.quarantined_batches;
  m.Advance();
}

void Spool::AdoptNextSeq(std::int64_t next_seq) {
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  // Only a spool that started empty: one with history knows its own numbering, and renumbering
  // records it may already have shipped could count them twice.
  if (m.opened_fresh && !m.pending && next_seq > m.next_seq) {
    m.next_seq = next_seq;
    m.SaveCursor();
  }
}

std::int64_t Spool::next_seq() const {
  std::lock_guard lk(impl_->mu);
  return impl_->next_seq;
}

SpoolStats Spool::Stats() const {
  std::lock_guard lk(impl_->mu);
  SpoolStats s = impl_->stats;
  s.bytes = 0;
  for (const auto& [seg, size] : impl_->segments) s.bytes += size;
  return s;
}

}  // namespace spillway::agent
