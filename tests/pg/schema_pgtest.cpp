// What the database itself refuses, whatever the application code does.
#include <gtest/gtest.h>

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
