// The exec runtime against real processes: environment, exit codes, SIGTERM then SIGKILL.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "agent/runtime.hpp"
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

namespace {
std::string TempDir() {
  char tmpl[] = "/tmp/spillway-rt-XXXXXX";
  return ::mkdtemp(tmpl);
}
}  // namespace

TEST(ExecRuntime, ExitCodesBecomeStoppedOrFailed) {
  ExecRuntime rt("test \"$SPILLWAY_INSTANCE_ID\" = ok", 1s, TempDir(), spillway::test::AgentBinary());
  rt.Start({"ok", {0}});
  rt.Start({"bad", {1}});
  EXPECT_EQ(WaitState(rt, "ok", "stopped"), "stopped");
  EXPECT_EQ(WaitState(rt, "bad", "failed"), "failed");
  EXPECT_EQ(rt.State("unknown"), "");
}

TEST(ExecRuntime, SeesItsGpusAndIsKilledWhenItIgnoresSigterm) {
  const std::string dir = TempDir();
  // A grace of 2 s: the check 100 ms after SIGTERM must land inside it even on a loaded machine (with
  // 300 ms, a run where the test waited longer than that to poll saw the SIGKILL already).
  ExecRuntime rt("echo $CUDA_VISIBLE_DEVICES > " + dir + "/gpus; trap '' TERM; sleep 60 & wait; sleep 60", 2s,
                 dir, spillway::test::AgentBinary());
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

TEST(ExecRuntime, InstancesOutliveTheRuntimeAndAreTakenUpAgain) {
  const std::string dir = TempDir();
  int pid = 0;
  {
    ExecRuntime rt("echo $$ > " + dir + "/pid; exec sleep 600", 1s, dir, spillway::test::AgentBinary());
    rt.Start({"ins_1", {0}});
    ASSERT_TRUE(spillway::test::WaitFor([&] {
      std::ifstream f(dir + "/pid");
      return bool(f >> pid) && pid > 0;
    }, 5s));
    EXPECT_EQ(rt.State("ins_1"), "running");
  }  // the agent goes away
  EXPECT_EQ(::kill(pid, 0), 0) << "the launcher died with the runtime";
  ExecRuntime again("exec sleep 600", 1s, dir, spillway::test::AgentBinary());
  EXPECT_EQ(again.Known(), std::vector<std::string>{"ins_1"});
  EXPECT_EQ(again.State("ins_1"), "running");
  again.Stop("ins_1");  // SIGTERM reaches the adopted process: sleep dies of it
  EXPECT_EQ(WaitState(again, "ins_1", "stopped"), "stopped");
  EXPECT_TRUE(spillway::test::WaitFor([&] { return ::kill(pid, 0) != 0; }, 5s));
  again.Forget("ins_1");
  EXPECT_TRUE(again.Known().empty());
  // An adopted launcher that exits by itself reports its exit status through the shim.
  {
    ExecRuntime rt("sleep 1; exit 3", 1s, dir, spillway::test::AgentBinary());
    rt.Start({"ins_2", {0}});
  }
  ExecRuntime third("true", 1s, dir, spillway::test::AgentBinary());
  EXPECT_EQ(WaitState(third, "ins_2", "failed"), "failed");
  spillway::test::RunCommand({"/bin/rm", "-rf", dir}, {}, nullptr);
}
