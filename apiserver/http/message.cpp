#include "apiserver/http/message.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/crypto.hpp"
#include "core/json.hpp"

namespace spillway::http {

bool BodyStream::Write(std::string chunk) {
  std::function<void()> ready;
  {
    std::unique_lock lk(mu_);
    if (!room_.wait_for(lk, kStall, [&] { return abandoned_ || queued_bytes_ < limit_; })) abandoned_ = true;
    if (abandoned_) return false;
    if (chunk.empty()) return true;
    queued_bytes_ += chunk.size();
    queued_.push_back(std::move(chunk));
    ready = std::move(ready_);
    ready_ = nullptr;
  }
  if (ready) ready();
  return true;
}

void BodyStream::Close(bool complete) {
  std::function<void()> ready;
  {
    std::lock_guard lk(mu_);
    if (closed_) return;
    closed_ = true;
    complete_ = complete;
    ready = std::move(ready_);
    ready_ = nullptr;
  }
  if (ready) ready();
}

BodyStream::Taken BodyStream::Take() {
  Taken t;
  {
    std::lock_guard lk(mu_);
    t.bytes.reserve(queued_bytes_);
    for (auto& c : queued_) t.bytes += c;
    queued_.clear();
    queued_bytes_ = 0;
    t.ended = closed_;
    t.complete = complete_;
  }
  room_.notify_all();
  return t;
}

void BodyStream::OnReady(std::function<void()> ready) {
  {
    std::lock_guard lk(mu_);
    if (queued_.empty() && !closed_) {
      ready_ = std::move(ready);
      return;
    }
  }
  ready();
}

void BodyStream::Abandon() {
  {
    std::lock_guard lk(mu_);
    abandoned_ = true;
    queued_.clear();
    queued_bytes_ = 0;
    ready_ = nullptr;
  }
  room_.notify_all();
}

bool BodyStream::abandoned() const {
  std::lock_guard lk(mu_);
  return abandoned_;
}

Response ErrorResponse(int status, const std::string& code, const std::string& message,
                       const std::string& request_id, const std::vector<std::pair<std::string, std::int64_t>>& numbers,
                       const std::vector<std::pair<std::string, std::vector<std::int64_t>>>& lists) {
  Response r;
  r.status = status;
  boost::json::object err{{"code", code}, {"message", message}, {"request_id", request_id}};
  for (const auto& [name, value] : numbers) err[name] = value;
  for (const auto& [name, values] : lists) {
    boost::json::array a;
    for (const std::int64_t v : values) a.push_back(v);
    err[name] = std::move(a);
  }
  r.body = ToJson(boost::json::object{{"error", std::move(err)}}) + "\n";  // quotes nothing raw: see ToJson
  return r;
}

namespace {
// Request ids must be unique, not secret: a per-thread splitmix64 stream seeded from the OS CSPRNG
// gives 96 bits per id without a trip into OpenSSL (which checks getpid() on every call).
std::string NewRequestId() {
  thread_local std::uint64_t state = [] {
    std::uint64_t seed = 0;
    const std::string bytes = RandomBytes(sizeof seed);
    std::memcpy(&seed, bytes.data(), sizeof seed);
    return seed;
  }();
  auto next = [] {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  const std::uint64_t words[2] = {next(), next()};
  return "req_" + HexEncode(std::string_view(reinterpret_cast<const char*>(words), 12));
}
}  // namespace

std::string RequestIdFrom(const std::string& supplied) {
  bool ok = !supplied.empty() && supplied.size() <= 128;
  for (unsigned char c : supplied)
    ok &= (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':');
  return ok ? supplied : NewRequestId();
}

std::string PercentDecode(const std::string& s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else if (plus_is_space && s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace spillway::http
