#pragma once
// What code outside the stores may name of the database: an open transaction or session, as opaque
// handles to pass to a store function. Stores (and core/db) include <pqxx/pqxx>; handlers include
// this, so the compiler keeps SQL and row access out of them.
#include <pqxx/types.hxx>  // forward declarations only

namespace spillway {
using Tx = pqxx::transaction_base;      // a transaction a store function runs its statements in
using Session = pqxx::connection_base;  // a connection a step opens its own transactions on
}  // namespace spillway
