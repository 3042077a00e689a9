-- pgtide schema, version 4: a consumer's page read proves the page is whole.

-- Prune expires a consumer and deletes what it had not read in one transaction. A page
-- read for consumers (a consumer's replay, or a feed some consumers follow) also names
-- those of them that were expired or dropped, in the same statement, so at the same
-- snapshot as its rows: one that is not named was live, so that transaction had not
-- committed when the rows were read, and none of its rows had been deleted. (A separate
-- check after the read would say the same at the cost of a round trip per page.)
CREATE FUNCTION :SCHEMA.read_batch(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                   page_size integer, check_pending boolean, consumers text[])
RETURNS TABLE (snapshot text, closed boolean, pending boolean, id bigint, txid xid8, op "char",
               changed text[], new text, old text, shape integer, written_ms float8, expired text[])
LANGUAGE plpgsql
VOLATILE
SET enable_bitmapscan = off
SET enable_seqscan = off
SET enable_sort = off
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  writers_committing boolean := false;
BEGIN
  IF check_pending THEN
    IF pg_try_advisory_lock(hashtext(:CHANNEL || ':pending'), rel::integer) THEN
      PERFORM pg_advisory_unlock(hashtext(:CHANNEL || ':pending'), rel::integer);
    ELSE
      writers_committing := true;
    END IF;
  END IF;
  RETURN QUERY
    WITH bounds AS (
      SELECT coalesce((SELECT e.first_id FROM :SCHEMA.eras e WHERE e.era = read_batch.era), 1) AS lo,
             (SELECT min(e.first_id) FROM :SCHEMA.eras e WHERE e.era > read_batch.era) AS hi
    ),
    batch AS (
      SELECT b.lo, coalesce(b.hi, 9223372036854775807) AS hi, b.hi IS NOT NULL AS closed,
             coalesce(upto, CASE WHEN b.hi IS NOT NULL THEN '9223372036854775807:9223372036854775807:'::pg_snapshot END,
                      pg_current_snapshot()) AS s,
             (SELECT array_agg(n) FROM unnest(consumers) n
               WHERE NOT EXISTS (SELECT FROM :SCHEMA.consumers c WHERE c.name = n AND c.expired_at IS NULL)) AS expired
        FROM bounds b
    ),
    start AS (
      -- The walk by txid, not by id, over statement starts only (log_starts): ORDER BY
      -- the index's columns keeps the planner on it (a plain min(id) would walk the
      -- primary key from the era's first id).
      SELECT CASE
        WHEN after_id IS NOT NULL THEN after_id
        WHEN pg_snapshot_xmax(base) <= '3'::xid8 THEN batch.lo - 1
        ELSE least(
          (SELECT min(f.id) FROM (
             SELECT c.id FROM :SCHEMA.log c
              WHERE c.relid = rel AND c.txid >= pg_snapshot_xmax(base) AND c.id >= batch.lo AND c.id < batch.hi AND c.wake
              ORDER BY c.relid, c.txid, c.id OFFSET 0) f),
          (SELECT min(f.id) FROM pg_snapshot_xip(base) x CROSS JOIN LATERAL (
             SELECT c.id FROM :SCHEMA.log c
              WHERE c.relid = rel AND c.txid = x AND c.id >= batch.lo AND c.id < batch.hi AND c.wake
              ORDER BY c.relid, c.txid, c.id LIMIT 1) f)
        ) - 1
      END AS after
      FROM batch
    )
    SELECT batch.s::text, batch.closed, writers_committing, l.id, l.txid, l.op, l.changed, l.new, l.old, l.shape,
           (extract(epoch FROM l.written_at) * 1000)::float8, batch.expired
      FROM batch CROSS JOIN start
      LEFT JOIN LATERAL (
        SELECT * FROM :SCHEMA.log p
         WHERE p.relid = rel AND p.id > start.after AND p.id >= batch.lo AND p.id < batch.hi
           AND NOT pg_visible_in_snapshot(p.txid, base) AND pg_visible_in_snapshot(p.txid, batch.s)
         ORDER BY p.id
         LIMIT page_size
      ) l ON true;
END
$$;

-- The version 1 signature, for callers that read for no consumer.
CREATE OR REPLACE FUNCTION :SCHEMA.read_batch(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                              page_size integer, check_pending boolean)
RETURNS TABLE (snapshot text, closed boolean, pending boolean, id bigint, txid xid8, op "char",
               changed text[], new text, old text, shape integer, written_ms float8)
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT r.snapshot, r.closed, r.pending, r.id, r.txid, r.op, r.changed, r.new, r.old, r.shape, r.written_ms
    FROM :SCHEMA.read_batch(rel, era, base, upto, after_id, page_size, check_pending, NULL::text[]) r
$$;

REVOKE ALL ON FUNCTION :SCHEMA.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[]) FROM PUBLIC;

-- Roles that may consume may read for a consumer too: those granted already, and those
-- grant_consumer grants from now on.
DO $$
DECLARE
  role_name text;
BEGIN
  FOR role_name IN SELECT DISTINCT p.grantee FROM information_schema.routine_privileges p
                    WHERE p.routine_schema = :CHANNEL AND p.routine_name = 'read_batch'
                      AND p.privilege_type = 'EXECUTE' AND p.grantee <> current_user LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[]) TO %I',
                   :SCHEMA_LITERAL_IDENT, role_name);
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION :SCHEMA.grant_consumer(grantee regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %s TO %s', :SCHEMA_LITERAL_IDENT, grantee);
  EXECUTE format('GRANT SELECT ON %1$s.migrations, %1$s.watched, %1$s.eras, %1$s.shapes TO %2$s', :SCHEMA_LITERAL_IDENT, grantee);
  EXECUTE format('GRANT SELECT, DELETE ON %s.log TO %s', :SCHEMA_LITERAL_IDENT, grantee);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s.consumers TO %s', :SCHEMA_LITERAL_IDENT, grantee);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean), '
    '%1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[]), '
    '%1$s.tables_with_news(oid[], pg_snapshot[]), %1$s.delivered(integer, pg_snapshot, pg_snapshot, bigint, integer, xid8, bigint), '
    '%1$s.era_of(bigint), %1$s.current_era() TO %2$s', :SCHEMA_LITERAL_IDENT, grantee);
END
$$;
