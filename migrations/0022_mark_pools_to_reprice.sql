-- Pools whose capacity changed (a host registered) and that the leader's repricer prices at its next
-- tick (docs/architecture.md, "Periodic steps and the leader"): a registration storm marks a pool once and costs one
-- whole-pool aggregate per tick, not one per registration.
CREATE TABLE pools_to_reprice (
  region    text NOT NULL,
  gpu_model text NOT NULL,
  marked_at timestamptz NOT NULL,
  PRIMARY KEY (region, gpu_model)
);
