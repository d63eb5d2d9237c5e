#include <gtest/gtest.h>

#include <thread>

#include "core/migrate.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using spillway::test::TestDb;

namespace {
int Count(pqxx::connection& c, const std::string& sql) {
  pqxx::nontransaction tx(c);
  return tx.exec1(sql)[0].as<int>();
}
}  // namespace

TEST(Migrations, ApplyInOrderOnceAndRecordChecksums) {
  TestDb db(/*migrate=*/false);
  auto c = db.Connect();
  const auto first = ApplyMigrations(*c, EmbeddedMigrations());
  EXPECT_EQ(first.applied, static_cast<int>(EmbeddedMigrations().size()));
  const auto second = ApplyMigrations(*c, EmbeddedMigrations());
  EXPECT_EQ(second.applied, 0);
  EXPECT_EQ(second.already_applied, static_cast<int>(EmbeddedMigrations().size()));
  const auto rows = pqxx::nontransaction(*c).exec("SELECT name, checksum FROM schema_migrations ORDER BY name");
  ASSERT_EQ(rows.size(), EmbeddedMigrations().size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i][0].as<std::string>(), EmbeddedMigrations()[i].name);
    EXPECT_EQ(rows[i][1].as<std::string>(), MigrationChecksum(EmbeddedMigrations()[i]));
  }
  EXPECT_TRUE(CheckSchema(*c, EmbeddedMigrations()).current());
}

TEST(Migrations, RefuseWhenAnAppliedMigrationChanged) {
  TestDb db(false);
  auto c = db.Connect();
  std::vector<Migration> v1 = {{"0001_create_a.sql", "CREATE TABLE a (x int);"}};
  ApplyMigrations(*c, v1);
  std::vector<Migration> edited = {{"0001_create_a.sql", "CREATE TABLE a (x bigint);"},
                                   {"0002_create_b.sql", "CREATE TABLE b (x int);"}};
  try {
    ApplyMigrations(*c, edited);
    FAIL() << "an edited migration was accepted";
  } catch (const MigrationError& e) {
    EXPECT_NE(std::string(e.what()).find("0001_create_a.sql"), std::string::npos) << e.what();
  }
  // Nothing after the edited one was applied either.
  EXPECT_EQ(Count(*c, "SELECT count(*) FROM schema_migrations"), 1);
  EXPECT_EQ(Count(*c, "SELECT count(*) FROM pg_tables WHERE tablename = 'b'"), 0);
}

TEST(Migrations, AFailingMigrationLeavesNoTrace) {
  TestDb db(false);
  auto c = db.Connect();
  std::vector<Migration> v = {{"0001_create_a.sql", "CREATE TABLE a (x int);"},
                              {"0002_broken.sql", "CREATE TABLE c (x int); SELECT no_such_function();"}};
  EXPECT_THROW(ApplyMigrations(*c, v), MigrationError);
  EXPECT_EQ(Count(*c, "SELECT count(*) FROM schema_migrations"), 1);
  EXPECT_EQ(Count(*c, "SELECT count(*) FROM pg_tables WHERE tablename = 'c'"), 0);
  const auto status = CheckSchema(*c, v);
  EXPECT_EQ(status.pending, (std::vector<std::string>{"0002_broken.sql"}));
}

TEST(Migrations, ConcurrentRunsBothSucceedAndApplyOnce) {
  TestDb db(false);
  // The first migration is slow, so the second run surely arrives while the first holds the lock.
  std::vector<Migration> v = {{"0001_slow.sql", "SELECT pg_sleep(0.5); CREATE TABLE slow (x int);"},
                              {"0002_counter.sql", "CREATE TABLE counter (n int); INSERT INTO counter VALUES (1);"}};
  std::atomic<int> ok{0};
  std::vector<MigrateResult> results(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      auto c = db.Connect();
      results[i] = ApplyMigrations(*c, v);
      ++ok;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(results[0].applied + results[1].applied, 2);
  auto c = db.Connect();
  EXPECT_EQ(Count(*c, "SELECT count(*) FROM schema_migrations"), 2);
  EXPECT_EQ(Count(*c, "SELECT count(*) FROM counter"), 1);
}

TEST(Migrations, SchemaStatusSeesPendingAndUnknown) {
  TestDb db(false);
  auto c = db.Connect();
  std::vector<Migration> v1 = {{"0001_a.sql", "SELECT 1;"}, {"0002_b.sql", "SELECT 2;"}};
  ApplyMigrations(*c, v1);
  std::vector<Migration> older = {{"0001_a.sql", "SELECT 1;"}};
  EXPECT_TRUE(CheckSchema(*c, older).current());
  EXPECT_EQ(CheckSchema(*c, older).unknown, (std::vector<std::string>{"0002_b.sql"}));
  std::vector<Migration> newer = v1;
  newer.push_back({"0003_c.sql", "SELECT 3;"});
  EXPECT_EQ(CheckSchema(*c, newer).pending, (std::vector<std::string>{"0003_c.sql"}));
}
