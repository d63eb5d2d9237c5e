-- The pool's placeable hosts by GPU count, then id: best fit (provisioning/fleet_sql.hpp,
-- pool_best_fit_host) takes the smallest host with nothing on it from here, reading a few index
-- entries rather than every host of the pool. Heartbeats leave these columns as they are, so their
-- updates stay HOT.
CREATE INDEX hosts_placeable ON hosts (region, gpu_model, gpu_count, id) WHERE state = 'active' AND health = 'up';
