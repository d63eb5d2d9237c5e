#include "agent/host_agent.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <random>

#include "core/crypto.hpp"
#include "core/log.hpp"
#include "agent/files.hpp"
#include "agent/http_client.hpp"

namespace spillway::agent {
namespace {
constexpr const char* kAgentVersion = SPILLWAY_VERSION;
}

HostAgent::HostAgent(HostOptions options, RuntimePtr runtime, MeteringOptions metering)
    : options_(std::move(options)),
      runtime_(std::move(runtime)),
      spool_(std::move(metering.spool)),
      sampler_(std::move(metering.sampler)),
      batch_samples_(metering.batch_samples) {
  if (!spool_) return;
  LoadLastKnown();
  std::vector<int> indices;
  for (const auto& g : options_.gpus) indices.push_back(static_cast<int>(g.index));
  meter_ = std::make_unique<Meter>(indices, sample_interval_, NowMs());
  if (!sampler_) {
    const std::string seed = Sha256Hex(options_.hostname).substr(0, 16);
    sampler_ = std::make_unique<SimulatedSampler>(std::stoull(seed, nullptr, 16), options_.gpus,
                                                  [this](int gpu) { return meter_->Busy(gpu); });
  }
}

void HostAgent::LoadLastKnown() {
  if (options_.state_dir.empty()) return;
  const auto text = ReadFile(options_.state_dir + "/last_known.json");
  if (!text) return;
  try {
    const auto v = boost::json::parse(*text).as_object();
    if (const auto* ms = v.if_contains("sample_interval_ms"))
      sample_interval_ = std::chrono::milliseconds(std::max<std::int64_t>(100, ms->as_int64()));
    if (const auto* gpus = v.if_contains("instance_gpus"))
      for (const auto& [id, list] : gpus->as_object())
        recovered_gpus_[std::string(id)] = boost::json::value_to<std::vector<int>>(list);
  } catch (const std::exception& e) {
    log::Warn("last_known.json unreadable: ignored", {{"hostname", options_.hostname}, {"error", e.what()}});
    recovered_gpus_.clear();
  }
}

void HostAgent::SaveLastKnown() {
  if (options_.state_dir.empty() || !spool_) return;
  boost::json::object gpus;
  if (have_assignments_)
    for (const auto& [id, a] : assigned_) gpus[id] = boost::json::value_from(a.gpus);
  else  // registered, not yet told: keep what was known
    for (const auto& [id, list] : recovered_gpus_) gpus[id] = boost::json::value_from(list);
  const boost::json::object v{{"sample_interval_ms", sample_interval_.count()}, {"instance_gpus", std::move(gpus)}};
  if (!WriteFileAtomically(options_.state_dir + "/last_known.json", boost::json::serialize(v)))
    log::Warn("cannot write last_known.json", {{"hostname", options_.hostname}});
}

HostAgent::~HostAgent() {
  Stop();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  if (sample_thread_.joinable()) sample_thread_.join();
  if (ship_thread_.joinable()) ship_thread_.detach();  // may be in a call; holds nothing to save
  if (poll_thread_.joinable()) poll_thread_.detach();
}

MeteringStats HostAgent::Metering() const {
  MeteringStats m;
  if (spool_) m.spool = spool_->Stats();
  m.batches_shipped = batches_shipped_;
  m.ship_failures = ship_failures_;
  m.sampler_errors = sampler_errors_;
  m.samples_unattributed = samples_unattributed_;
  m.samples_already_stored = samples_already_stored_;
  return m;
}

std::string HostAgent::SimulatedUuid(const std::string& hostname, int index) {
  const std::string h = Sha256Hex(hostname + "/" + std::to_string(index));
  return "GPU-" + h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" +
         h.substr(20, 12);
}

std::int64_t HostAgent::SimulatedMemory(const std::string& model) {
  const auto gb = model.find("GB");
  if (gb == std::string::npos) return 0;
  auto start = gb;
  while (start > 0 && std::isdigit(static_cast<unsigned char>(model[start - 1]))) --start;
  if (start == gb) return 0;
  return std::stoll(model.substr(start, gb - start)) * (1LL << 30);
}

void HostAgent::Start() {
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  poll_thread_ = std::thread([this] { PollLoop(); });
  if (spool_) {
    sample_thread_ = std::thread([this] { SampleLoop(); });
    ship_thread_ = std::thread([this] { ShipLoop(); });
  }
}

void HostAgent::Stop() {
  if (stopping_.exchange(true)) return;
  cv_.notify_all();
  ship_cv_.notify_all();
  // The time since the last tick is recorded too, so a restart leaves no unobserved gap behind.
  if (spool_) {
    if (sample_thread_.joinable()) sample_thread_.join();
    SampleOnce();
  }
}

void HostAgent::Drain(std::chrono::milliseconds grace) {
  std::lock_guard lk(mu_);
  const auto ids = runtime_->Known();
  for (const auto& id : ids) runtime_->Stop(id);
  const auto deadline = std::chrono::steady_clock::now() + grace + std::chrono::seconds(1);
  for (;;) {
    runtime_->Poll();
    bool all = true;
    for (const auto& id : ids) all &= runtime_->State(id) != "running" && runtime_->State(id) != "starting";
    if (all || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (const auto& id : ids) runtime_->Forget(id);
  assigned_.clear();
  log::Info("host drained: its instances are stopped", {{"hostname", options_.hostname},
                                                        {"instances", static_cast<std::int64_t>(ids.size())}});
}

std::string HostAgent::Token() {
  std::lock_guard lk(mu_);
  return token_;
}

void HostAgent::Invalidate(const std::string& token) {
  std::lock_guard lk(mu_);
  if (token_ == token) token_.clear();
}

bool HostAgent::Register() {
  const protocol::Registration body{options_.hostname,     options_.region,         options_.zone,
                                    options_.gpus,         options_.driver_version, options_.cuda_version,
                                    options_.public_address, options_.port_range,   options_.simulated};
  try {
    HttpClient client(options_.api, "", options_.ca_file);
    const auto r = client.Call("POST", "/v1/agent/register", options_.bootstrap_token, boost::json::serialize(protocol::ToJson(body)),
                               std::chrono::seconds(10));
    if (r.status != 200 && r.status != 201) {
      log::Error("registration refused", {{"hostname", options_.hostname}, {"status", r.status}, {"body", r.body}});
      return false;
    }
    const auto reply = protocol::ParseRegistered(boost::json::parse(r.body));
    std::lock_guard lk(mu_);
    token_ = reply.host_token;
    host_id_ = reply.host_id;
    heartbeat_interval_ = std::chrono::milliseconds(reply.heartbeat_interval_ms);
    sample_interval_ = std::chrono::milliseconds(std::max<std::int64_t>(100, reply.sample_interval_ms));
    interval_changed_ = true;
    cv_.notify_all();
    if (meter_) meter_->SetInterval(sample_interval_);
    if (spool_) spool_->AdoptNextSeq(reply.next_batch_seq);
    SaveLastKnown();
    version_ = -1;
    log::Info("registered", {{"hostname", options_.hostname}, {"host_id", host_id_}, {"status", r.status}});
    return true;
  } catch (const std::exception& e) {
    log::Warn("registration failed", {{"hostname", options_.hostname}, {"error", e.what()}});
    return false;
  }
}

void HostAgent::Apply(std::int64_t version, std::map<std::string, Assigned> next) {
  std::lock_guard lk(mu_);
  const auto now = NowMs();
  for (const auto& [id, a] : next) {
    const bool past_notice = a.preempt_at && *a.preempt_at <= now;
    if (a.desired == "running" && !past_notice) runtime_->Start({id, a.gpus, a.spec});
    else runtime_->Stop(id);
  }
  // An instance absent from the list must not run on this host: also one the runtime took up again
  // after an agent restart that was ended meanwhile.
  for (const auto& [id, a] : assigned_)
    if (!next.count(id)) runtime_->Forget(id);
  for (const auto& id : runtime_->Known())
    if (!next.count(id)) runtime_->Forget(id);
  const bool changed = !have_assignments_ || next.size() != assigned_.size() ||
                       !std::equal(next.begin(), next.end(), assigned_.begin(), [](const auto& x, const auto& y) {
                         return x.first == y.first && x.second.gpus == y.second.gpus;
                       });
  assigned_ = std::move(next);
  version_ = version;
  have_assignments_ = true;
  recovered_gpus_.clear();
  if (changed) SaveLastKnown();
  kick_ = true;
  cv_.notify_all();
}

void HostAgent::PollLoop() {
  std::unique_ptr<HttpClient> client;
  while (!stopping_) {
    std::string token = Token();
    if (token.empty()) {
      if (!Register()) {
        std::this_thread::sleep_for(std::chrono::seconds(2));
        continue;
      }
      token = Token();
    }
    std::int64_t known;
    {
      std::lock_guard lk(mu_);
      known = version_;
    }
    try {
      if (!client) client = std::make_unique<HttpClient>(options_.api, "", options_.ca_file);
      const auto r = client->Call("GET", "/v1/agent/assignments?version=" + std::to_string(known) + "&wait=20", token,
                                  "", std::chrono::seconds(30));
      if (r.status == 401) {
        log::Warn("host token refused: registering again", {{"hostname", options_.hostname}});
        Invalidate(token);
        continue;
      }
      if (r.status != 200) {
        log::Warn("assignments failed", {{"status", r.status}, {"body", r.body}});
        std::this_thread::sleep_for(std::chrono::seconds(1));
        continue;
      }
      auto list = protocol::ParseAssignmentList(boost::json::parse(r.body));
      std::map<std::string, Assigned> next;
      for (auto& i : list.instances)
        next.emplace(std::move(i.id),
                     Assigned{std::move(i.desired_state), std::move(i.gpu_indices), i.preempt_at, std::move(i.spec)});
      Apply(list.version, std::move(next));
    } catch (const std::exception& e) {
      client.reset();
      log::Warn("assignments: cannot reach the apiserver", {{"error", e.what()}});
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
}

void HostAgent::HeartbeatLoop() {
  std::unique_ptr<HttpClient> client;
  std::map<std::string, std::string> last_sent;
  bool heard = true;  // the last heartbeat was answered
  auto next_due = std::chrono::steady_clock::now();
  while (!stopping_) {
    protocol::Heartbeat report{{}, kAgentVersion};
    std::map<std::string, std::string> states;
    std::string token;
    bool due;
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, std::chrono::milliseconds(200), [&] { return stopping_ || kick_; });
      if (stopping_) break;
      runtime_->Poll();
      const auto now = NowMs();
      for (const auto& [id, a] : assigned_) {
        if (a.preempt_at && *a.preempt_at <= now) runtime_->Stop(id);  // the notice is over
        std::string state = runtime_->State(id);
        // Never started here (the agent restarted, or it was stopped before it ran): it is stopped.
        if (state.empty() && (a.desired == "stopped" || (a.preempt_at && *a.preempt_at <= now))) state = "stopped";
        if (state.empty()) continue;
        states[id] = state;
        report.instances.push_back({id, state});
      }
      if (meter_) {
        std::map<int, std::string> running;
        for (const auto& [id, state] : states)
          if (state == "running")
            for (int g : assigned_[id].gpus) running[g] = id;
        // Restarted and not yet told: the instances the runtime took up again run on the GPUs they
        // were last assigned (the control plane settles it when heard: see ShipLoop's 422 repair).
        if (!have_assignments_)
          for (const auto& [id, gpus] : recovered_gpus_)
            if (runtime_->State(id) == "running")
              for (int g : gpus) running.emplace(g, id);
        meter_->Observe(now, running);
      }
      token = token_;
      due = kick_ || states != last_sent || std::chrono::steady_clock::now() >= next_due;
      kick_ = false;
    }
    if (!due || token.empty()) continue;
    try {
      if (!client) client = std::make_unique<HttpClient>(options_.api, "", options_.ca_file);
      const auto r = client->Call("POST", "/v1/agent/heartbeat", token, boost::json::serialize(protocol::ToJson(report)),
                                  std::chrono::seconds(10));
      if (r.status == 401) {
        Invalidate(token);
      } else if (r.status == 200) {
        last_sent = std::move(states);
        if (!heard) {
          // Heard again after a failure: the shipper stops backing off and sends its backlog now.
          std::lock_guard lk(mu_);
          link_back_ = true;
          ship_cv_.notify_all();
        }
        heard = true;
      } else {
        log::Warn("heartbeat refused", {{"status", r.status}, {"body", r.body}});
      }
    } catch (const std::exception& e) {
      client.reset();
      heard = false;
      log::Warn("heartbeat: cannot reach the apiserver", {{"error", e.what()}});
    }
    std::lock_guard lk(mu_);
    next_due = std::chrono::steady_clock::now() + heartbeat_interval_;
  }
}

void HostAgent::SampleOnce() {
  std::lock_guard lk(sample_mu_);
  const TimeMs now = NowMs();
  std::vector<GpuReading> readings;
  try {
    readings = sampler_->Read(now);
  } catch (const SamplerError& e) {
    // Nothing recorded for this tick; the next one covers the time (up to 3 intervals).
    ++sampler_errors_;
    log::Error("sampling failed", {{"hostname", options_.hostname}, {"error", e.what()}});
    return;
  }
  const auto samples = meter_->Tick(now, readings);
  if (samples.empty()) return;
  if (!spool_->Append(now, samples)) return;  // logged by the spool
  {
    std::lock_guard slk(mu_);
    ship_kick_ = true;
  }
  ship_cv_.notify_all();
}

void HostAgent::SampleLoop() {
  auto last = std::chrono::steady_clock::now();
  while (!stopping_) {
    {
      std::unique_lock lk(mu_);
      const auto interval = sample_interval_;
      // Registration may change the interval: wake then and wait out the new one from `last`.
      cv_.wait_until(lk, last + interval, [&] { return stopping_ || interval_changed_; });
      if (stopping_) break;
      if (interval_changed_) {
        interval_changed_ = false;
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      last = now - (last + interval) > interval ? now : last + interval;  // fell behind: start afresh
    }
    SampleOnce();
  }
}


std::chrono::milliseconds ShipBackoff(std::chrono::milliseconds previous, std::chrono::milliseconds since_success) {
  using std::chrono::milliseconds;
  const milliseconds doubled = std::max(milliseconds(500), previous * 2);
  // At most an eighth of the time since the last batch went through (a 70 s cut retries within
  // about 9 s of its end), and never more than 30 s.
  const milliseconds cap = std::clamp(since_success / 8, milliseconds(500), milliseconds(30000));
  return std::min(doubled, cap);
}

void HostAgent::ShipLoop() {
  std::unique_ptr<HttpClient> client;
  std::chrono::milliseconds backoff{0};
  auto last_shipped = std::chrono::steady_clock::now();
  std::mt19937_64 rng(std::random_device{}());
  while (!stopping_) {
    {
      std::unique_lock lk(mu_);
      if (backoff.count() > 0) {
        // Jittered, so a fleet that lost the apiserver does not come back in step. A heartbeat
        // answered again (the network is back) ends the wait at once.
        std::uniform_int_distribution<std::int64_t> jitter(backoff.count() / 2, backoff.count());
        ship_cv_.wait_for(lk, std::chrono::milliseconds(jitter(rng)), [&] { return stopping_ || link_back_; });
        if (link_back_) backoff = std::chrono::milliseconds(0);
      } else {
        ship_cv_.wait_for(lk, sample_interval_, [&] { return stopping_ || ship_kick_; });
      }
      ship_kick_ = link_back_ = false;  // a wake-up is for the wait it ended, not a later one
    }
    if (stopping_) break;
    const std::string token = Token();
    if (token.empty()) continue;  // registration is the poll loop's job
    for (;;) {  // drain what is waiting, one batch at a time
      auto batch = spool_->NextBatch(batch_samples_);
      if (!batch || stopping_) break;
      const auto send = [&] {
        batch->sent_at_ms = NowMs();
        HttpClient::Result r;
        try {
          if (!client) client = std::make_unique<HttpClient>(options_.api, "", options_.ca_file);
          r = client->Call("POST", "/v1/agent/samples", token, boost::json::serialize(protocol::ToJson(*batch)),
                           std::chrono::seconds(30));
        } catch (const std::exception& e) {
          client.reset();
          r = {0, e.what(), {}};
        }
        return r;
      };
      HttpClient::Result r = send();
      if (r.status == 422) {
        // Samples of an instance the control plane took back while this host could not hear it
        // (failed for its silence, say): the GPU's time is real but no longer that instance's. And
        // samples of GPU time the server already holds (sent before under another batch number: a
        // restored state directory, say). The server stored nothing; the batch goes again, same
        // batch_seq, with the first unattributed and the second left out.
        if (const auto repaired = protocol::RepairSampleBatch(*batch, r.body); repaired.any()) {
          samples_unattributed_ += repaired.unattributed;
          samples_already_stored_ += repaired.left_out;
          log::Warn("batch refused for samples the server cannot take as they are: sent again repaired",
                    {{"hostname", options_.hostname}, {"batch_seq", batch->batch_seq},
                     {"unattributed", repaired.unattributed}, {"left_out", repaired.left_out}, {"body", r.body}});
          r = send();
        }
      }
      if (r.status == 200) {
        spool_->Acknowledge();
        ++batches_shipped_;
        backoff = std::chrono::milliseconds(0);
        last_shipped = std::chrono::steady_clock::now();
        continue;
      }
      if (r.status == 422 || r.status == 400 || r.status == 413) {
        // Never retried (it would be refused again): kept aside with the server's reason, and the
        // batches behind it go on.
        spool_->Quarantine(std::to_string(r.status) + " " + r.body);
        log::Error("sample batch refused by the server: quarantined",
                   {{"hostname", options_.hostname}, {"batch_seq", batch->batch_seq}, {"body", r.body}});
        continue;
      }
      if (r.status == 401) Invalidate(token);
      ++ship_failures_;
      backoff = ShipBackoff(backoff, std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - last_shipped));
      log::Warn("sample batch not stored yet: kept in the spool, sent again later",
                {{"hostname", options_.hostname}, {"batch_seq", batch->batch_seq}, {"status", r.status},
                 {"body", r.body}, {"retry_in_ms", backoff.count()}});
      break;
    }
  }
}

}  // namespace spillway::agent
