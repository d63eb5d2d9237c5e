#pragma once
// SQL pieces billing's stores share (billing/invoices, billing/reports): the storage price spans and
// a volume's GB-milliseconds inside a window at one span's price.
#include "core/sql.hpp"

// spans(price, from_ts, to_ts): each storage price from its effective_from (inclusive) to the next one's.
#define SPW_STORAGE_SPANS                                                                         \
  "spans AS (SELECT price_micros_per_gb_month AS price, effective_from AS from_ts, "               \
  "coalesce(lead(effective_from) OVER (ORDER BY effective_from), 'infinity') AS to_ts FROM storage_prices)"
// Volume v's GB-ms in [$FROM, $TO) (epoch-ms parameters) within span sp, and the joins and window
// that select the (volume, span) pairs that meet it.
#define SPW_STORAGE_GB_MS(FROM, TO)                                                               \
  "v.size_gb::bigint * greatest(0, " SPW_EPOCH_MS("least(coalesce(v.deleted_at, " SPW_TS(TO) "), sp.to_ts, " SPW_TS(TO) ")") \
  " - " SPW_EPOCH_MS("greatest(v.created_at, sp.from_ts, " SPW_TS(FROM) ")") ")"
#define SPW_STORAGE_FROM(FROM, TO)                                                                \
  " FROM volumes v JOIN spans sp ON sp.from_ts < " SPW_TS(TO) " AND sp.to_ts > " SPW_TS(FROM)      \
  " WHERE v.created_at < " SPW_TS(TO) " AND (v.deleted_at IS NULL OR v.deleted_at > " SPW_TS(FROM) ")"
