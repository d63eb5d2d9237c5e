// The exec runtime against real processes: environment, exit codes, SIGTERM then SIGKILL.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "metering/agent/runtime.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway::agent;
using namespace std::chrono_literals;

namespace {
std::string WaitState(ExecRuntime& rt, const std::string& id, const std::string& want) {
  std::string state;
  spillway::test::WaitFor([&] {
    rt.Poll();
    state = rt.State(id);
    return state == want;
  }, 10s);
  return state;
}
}  // namespace

TEST(ExecRuntime, ExitCodesBecomeStoppedOrFailed) {
  ExecRuntime rt("test \"$SPILLWAY_INSTANCE_ID\" = ok", 1s);
  rt.Start({"ok", {0}});
  rt.Start({"bad", {1}});
  EXPECT_EQ(WaitState(rt, "ok", "stopped"), "stopped");
  EXPECT_EQ(WaitState(rt, "bad", "failed"), "failed");
  EXPECT_EQ(rt.State("unknown"), "");
}

TEST(ExecRuntime, SeesItsGpusAndIsKilledWhenItIgnoresSigterm) {
  char tmpl[] = "/tmp/spillway-rt-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  ExecRuntime rt("echo $CUDA_VISIBLE_DEVICES > " + dir + "/gpus; trap '' TERM; sleep 60 & wait; sleep 60", 300ms);
  rt.Start({"ins_1", {2, 3}});
  EXPECT_EQ(rt.State("ins_1"), "running");
  std::string gpus;
  ASSERT_TRUE(spillway::test::WaitFor([&] {
    std::ifstream f(dir + "/gpus");
    std::getline(f, gpus);
    return !gpus.empty();
  }, 5s));
  EXPECT_EQ(gpus, "2,3");
  rt.Stop("ins_1");
  std::this_thread::sleep_for(100ms);
  rt.Poll();
  EXPECT_EQ(rt.State("ins_1"), "running");  // SIGTERM ignored: still within the grace
  EXPECT_EQ(WaitState(rt, "ins_1", "stopped"), "stopped");  // SIGKILL after it
  rt.Forget("ins_1");
  EXPECT_EQ(rt.State("ins_1"), "");
  spillway::test::RunCommand({"/bin/rm", "-rf", dir}, {}, nullptr);
}
