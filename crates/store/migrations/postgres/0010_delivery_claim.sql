-- The claim reads only what it can take. `deliveries_lanes` held in-flight rows too:
-- with a few thousand pushes in flight, every claim stepped over all of them (and
-- probed each one's record queue) before reaching a pending row, and PostgreSQL's
-- claim took 100-500 ms. And `deliveries_due` (system, status, next attempt) let the
-- planner, with stale statistics, fetch every waiting row and sort them (a claim of
-- 1,000 read a 20,000-row backlog: 1.5-2 s each). Now:
--   * `deliveries_ready`: rows waiting for a push (pending, retrying), by lane;
--   * `deliveries_leased`: in-flight rows by lease end, to take over expired leases;
--   * `deliveries_open`: a record's unfinished deliveries, for the per-record order
--     probe, coalescing and echo checks (the full `deliveries_queue` index grew
--     with every finished delivery and served the same lookups);
--   * `deliveries_dead`: dead rows per system, for the queue counts.
-- The claim walks `deliveries_ready` in order, a window at a time (see `claim`).
CREATE INDEX deliveries_ready ON deliveries (system, lane, change_seq)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_leased ON deliveries (system, lease_until)
    WHERE status = 'in_flight';
CREATE INDEX deliveries_open ON deliveries (system, ordering_key, change_seq)
    WHERE status IN ('pending', 'retrying', 'in_flight');
DROP INDEX deliveries_lanes;
DROP INDEX deliveries_queue;
CREATE INDEX deliveries_dead ON deliveries (system)
    WHERE status = 'dead';
DROP INDEX deliveries_unfinished;
DROP INDEX deliveries_due;
