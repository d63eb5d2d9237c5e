// What the database itself refuses, whatever the application code does.
#include <gtest/gtest.h>

#include "provisioning/words.hpp"
#include "tests/support/test_support.hpp"

using spillway::test::TestDb;

TEST(Schema, CustomerTenantKeysCanOnlyBeMembers) {
  TestDb db;
  auto c = db.Connect();
  pqxx::work tx(*c);
  tx.exec("INSERT INTO tenants (id, name) VALUES ('ten_a', 'acme')");
  tx.exec("INSERT INTO api_keys (id, tenant_id, role, secret_hash) VALUES ('key_m', 'ten_a', 'member', "
          "decode(repeat('00', 32), 'hex'))");
  tx.commit();
  pqxx::work tx2(*c);
  EXPECT_THROW(tx2.exec("INSERT INTO api_keys (id, tenant_id, role, secret_hash) VALUES ('key_a', 'ten_a', "
                        "'admin', decode(repeat('00', 32), 'hex'))"),
               pqxx::check_violation);
}

TEST(Schema, AuditLogIsAppendOnly) {
  TestDb db;
  auto c = db.Connect();
  {
    pqxx::work tx(*c);
    tx.exec("INSERT INTO audit_log (action) VALUES ('test')");
    tx.commit();
  }
  {
    pqxx::work tx(*c);
    EXPECT_THROW(tx.exec("UPDATE audit_log SET action = 'changed'"), pqxx::sql_error);
  }
  {
    pqxx::work tx(*c);
    EXPECT_THROW(tx.exec("DELETE FROM audit_log"), pqxx::sql_error);
  }
  pqxx::nontransaction tx(*c);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM audit_log WHERE action = 'test'")[0].as<int>(), 1);
}

TEST(Schema, OneOperatorTenantAndUniqueNames) {
  TestDb db;
  auto c = db.Connect();
  {
    pqxx::work tx(*c);
    tx.exec("INSERT INTO tenants (id, name, is_operator) VALUES ('ten_o', 'op', true)");
    tx.commit();
  }
  {
    pqxx::work tx(*c);
    EXPECT_THROW(tx.exec("INSERT INTO tenants (id, name, is_operator) VALUES ('ten_p', 'op2', true)"),
                 pqxx::unique_violation);
  }
  pqxx::work tx(*c);
  EXPECT_THROW(tx.exec("INSERT INTO tenants (id, name) VALUES ('ten_q', 'OP')"), pqxx::unique_violation);
}

// "Live" is defined once in C++ and once in SQL; they must agree on every state, and the schema's
// list of states must be the enum's.
TEST(Schema, LiveMeansTheSameInCppAndSql) {
  TestDb db;
  auto c = db.Connect();
  pqxx::nontransaction tx(*c);
  for (spillway::InstanceState s : spillway::kAllInstanceStates) {
    const std::string name = spillway::ToString(s);
    EXPECT_EQ(tx.exec_params1("SELECT instance_is_live($1)", name)[0].as<bool>(), spillway::IsLive(s)) << name;
    EXPECT_EQ(tx.exec_params1("SELECT " SPW_ON_HOST("$1::text"), name)[0].as<bool>(), spillway::IsOnHost(s)) << name;
    EXPECT_EQ(spillway::ParseInstanceState(name), s);
  }
  const auto check = tx.exec1(
      "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'instances'::regclass "
      "AND pg_get_constraintdef(oid) LIKE '%state = ANY%' AND pg_get_constraintdef(oid) NOT LIKE '%market%'")[0]
                         .as<std::string>();
  size_t quoted = 0;
  for (size_t p = check.find('\''); p != std::string::npos; p = check.find('\'', p + 1)) ++quoted;
  EXPECT_EQ(quoted / 2, std::size(spillway::kAllInstanceStates)) << check;
  for (spillway::InstanceState s : spillway::kAllInstanceStates)
    EXPECT_NE(check.find(std::string("'") + spillway::ToString(s) + "'"), std::string::npos) << check;
  // The planner inlines it: the partial index serves a query written with it.
  const auto plan = tx.exec("EXPLAIN SELECT id FROM instances WHERE host_id = 'h' AND instance_is_live(state)");
  std::string text;
  for (const auto& r : plan) text += r[0].as<std::string>() + "\n";
  EXPECT_NE(text.find("instances_live_host"), std::string::npos) << text;
}
