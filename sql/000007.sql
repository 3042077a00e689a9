-- pgtide schema, version 7: live reads are planned once; autovacuum keeps up with the log.

-- A live read (a wake-up, one row or a few) was planned anew every time: PostgreSQL's
-- plan cache kept choosing a custom plan for read_batch's query, about half a
-- millisecond of planning per read, more than the read itself. A subscriber cost the
-- server 470 us of CPU per change it received (a single writer at 1.3k commits/s, 60 us
-- per INSERT without the subscriber; bench/README.md "Issue 15"). The generic plan is the
-- same index walk (read_batch forces index scans), so use it always: 225 us.
ALTER FUNCTION :SCHEMA.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[], boolean, integer, integer[])
  SET plan_cache_mode = force_generic_plan;

-- The log is written and pruned all day: every prune deletes what every consumer has
-- acknowledged, and the space comes back only once VACUUM has run. With the defaults
-- (vacuum after 20% of the table is dead, throttled by the cost delay) autovacuum was
-- still working through one prune's dead rows when the next prune deleted as many
-- again: in the benchmark's 10-minute soak (bench/README.md "Soak") dead rows piled up
-- to twice the live ones and the log grew every minute. The log is small and hot, so it
-- is vacuumed unthrottled and after a fixed number of dead rows instead.
ALTER TABLE :SCHEMA.log SET (
  autovacuum_vacuum_cost_delay = 0,
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 10000,
  autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 10000
);
