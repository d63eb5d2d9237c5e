#include "metering/agent/host_agent.hpp"

#include <boost/json.hpp>

#include "core/crypto.hpp"
#include "core/log.hpp"
#include "metering/agent/http_client.hpp"

namespace spillway::agent {
namespace {
constexpr const char* kAgentVersion = SPILLWAY_VERSION;
}

HostAgent::HostAgent(HostOptions options, RuntimePtr runtime)
    : options_(std::move(options)), runtime_(std::move(runtime)) {}

HostAgent::~HostAgent() {
  Stop();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  if (poll_thread_.joinable()) poll_thread_.detach();
}

std::string HostAgent::SimulatedUuid(const std::string& hostname, int index) {
  const std::string h = Sha256Hex(hostname + "/" + std::to_string(index));
  return "GPU-" + h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" +
         h.substr(20, 12);
}

void HostAgent::Start() {
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  poll_thread_ = std::thread([this] { PollLoop(); });
}

void HostAgent::Stop() {
  if (stopping_.exchange(true)) return;
  cv_.notify_all();
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
  const protocol::Registration body{options_.hostname, options_.region, options_.zone, options_.gpus};
  try {
    HttpClient client(options_.api);
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
    if (a.desired == "running" && !past_notice) runtime_->Start({id, a.gpus});
    else runtime_->Stop(id);
  }
  // An instance absent from the list must not run on this host: also one the runtime took up again
  // after an agent restart that was ended meanwhile.
  for (const auto& [id, a] : assigned_)
    if (!next.count(id)) runtime_->Forget(id);
  for (const auto& id : runtime_->Known())
    if (!next.count(id)) runtime_->Forget(id);
  assigned_ = std::move(next);
  version_ = version;
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
      if (!client) client = std::make_unique<HttpClient>(options_.api);
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
        next.emplace(std::move(i.id), Assigned{std::move(i.desired_state), std::move(i.gpu_indices), i.preempt_at});
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
      token = token_;
      due = kick_ || states != last_sent || std::chrono::steady_clock::now() >= next_due;
      kick_ = false;
    }
    if (!due || token.empty()) continue;
    try {
      if (!client) client = std::make_unique<HttpClient>(options_.api);
      const auto r = client->Call("POST", "/v1/agent/heartbeat", token, boost::json::serialize(protocol::ToJson(report)),
                                  std::chrono::seconds(10));
      if (r.status == 401) {
        Invalidate(token);
      } else if (r.status == 200) {
        last_sent = std::move(states);
      } else {
        log::Warn("heartbeat refused", {{"status", r.status}, {"body", r.body}});
      }
    } catch (const std::exception& e) {
      client.reset();
      log::Warn("heartbeat: cannot reach the apiserver", {{"error", e.what()}});
    }
    std::lock_guard lk(mu_);
    next_due = std::chrono::steady_clock::now() + heartbeat_interval_;
  }
}

}  // namespace spillway::agent
