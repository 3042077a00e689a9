-- pgtide schema, version 3: a smaller index of where transactions start.

-- A batch starts at the lowest log id of its transactions, and that is always the first
-- row of one of their capturing statements: a statement's rows take increasing ids in
-- the order they are written, and its first row is the one marked `wake` (rows a nested
-- statement wrote are moved as a whole, in order, marks included). So only marked rows need an
-- entry: one per statement instead of one per row, which takes an index insert off
-- every row of a bulk write (about a sixth of its capture cost).
CREATE INDEX log_starts ON :SCHEMA.log (relid, txid, id) WHERE wake;
DROP INDEX :SCHEMA.log_txid;

-- As in version 1, reading statement starts only.
CREATE OR REPLACE FUNCTION :SCHEMA.read_batch(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                   page_size integer, check_pending boolean)
RETURNS TABLE (snapshot text, closed boolean, pending boolean, id bigint, txid xid8, op "char",
               changed text[], new text, old text, shape integer, written_ms float8)
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
                      pg_current_snapshot()) AS s
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
           (extract(epoch FROM l.written_at) * 1000)::float8
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

-- As in version 1, probing statement starts only.
CREATE OR REPLACE FUNCTION :SCHEMA.tables_with_news(rels oid[], bases pg_snapshot[])
RETURNS SETOF oid
LANGUAGE sql
STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pg_temp
AS $$
  WITH era AS (SELECT coalesce(max(e.first_id), 1) AS lo FROM :SCHEMA.eras e)
  SELECT r.rel FROM era, unnest(rels, bases) AS r(rel, base)
   WHERE EXISTS (SELECT FROM :SCHEMA.log l
                  WHERE l.relid = r.rel AND l.txid >= pg_snapshot_xmax(r.base) AND l.id >= era.lo AND l.wake
                  ORDER BY l.relid, l.txid, l.id)
      OR EXISTS (SELECT FROM pg_snapshot_xip(r.base) x
                  WHERE EXISTS (SELECT FROM :SCHEMA.log l WHERE l.relid = r.rel AND l.txid = x AND l.id >= era.lo AND l.wake))
$$;

-- As in version 1, except that moving what nested statements logged goes by primary
-- key (log_txid, which it could use on PostgreSQL 18's skip scans, is gone).
CREATE OR REPLACE FUNCTION :SCHEMA.capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  xid xid8;
  written timestamptz;
  route :SCHEMA.routes;
  depth integer := pg_trigger_depth();
  nested_note text := 'pgtide.nested_' || :SCHEMA_KEY || '_' || depth;
  nested_first bigint;
  own_first bigint;
  styles text[];
BEGIN
  -- A statement that changed no row must not give a read-only transaction an xid.
  IF TG_OP = 'INSERT' THEN
    PERFORM FROM new_rows LIMIT 1;
  ELSE
    PERFORM FROM old_rows LIMIT 1;
  END IF;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF coalesce(current_setting('pgtide.era_' || :SCHEMA_KEY, true), '') = '' THEN
    PERFORM :SCHEMA.current_era();
  END IF;
  SELECT r.* INTO route FROM :SCHEMA.routes r WHERE r.relid = TG_RELID;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pgtide: % has capture triggers but is not in %.routes', TG_RELID::regclass, :CHANNEL
      USING HINT = 'watch the table again (tide.watch), or drop its pgtide triggers (tide.unwatch)';
  END IF;
  nested_first := nullif(current_setting(nested_note, true), '')::bigint;
  xid := pg_current_xact_id();
  written := clock_timestamp();
  IF NOT (current_setting('DateStyle') LIKE 'ISO%' AND current_setting('IntervalStyle') = 'postgres'
          AND current_setting('extra_float_digits')::integer > 0 AND current_setting('bytea_output') = 'hex'
          AND current_setting('TimeZone') IS NOT DISTINCT FROM current_setting('pgtide.timezone_' || :SCHEMA_KEY, true)) THEN
    styles := :SCHEMA.canonical_output();
  END IF;
  IF depth > 1 OR nested_first IS NOT NULL THEN
    -- Ids from here on are this statement's (the sequence hands them out in order).
    own_first := nextval(pg_get_serial_sequence(:SCHEMA_LITERAL_IDENT || '.log', 'id'));
  END IF;
  IF TG_OP = 'INSERT' AND route.insert_sql IS NULL THEN
    INSERT INTO :SCHEMA.log (txid, relid, op, new, shape, written_at, wake)
      SELECT xid, TG_RELID, 'i', ROW(n.*)::text, route.shape, written, CASE WHEN row_number() OVER () = 1 THEN true END
        FROM new_rows n;
  ELSIF TG_OP = 'DELETE' AND route.delete_sql IS NULL THEN
    INSERT INTO :SCHEMA.log (txid, relid, op, old, shape, written_at, wake)
      SELECT xid, TG_RELID, 'd', ROW(o.*)::text, route.shape, written, CASE WHEN row_number() OVER () = 1 THEN true END
        FROM old_rows o;
  ELSIF TG_OP = 'INSERT' THEN
    EXECUTE route.insert_sql USING xid, written;
  ELSIF TG_OP = 'DELETE' THEN
    EXECUTE route.delete_sql USING xid, written;
  ELSE
    EXECUTE route.update_sql USING xid, written;
  END IF;
  IF nested_first IS NOT NULL THEN
    WITH moved AS (
      -- By primary key, per watched table (nested statements may write other ones).
      DELETE FROM :SCHEMA.log l
       WHERE l.relid = ANY (ARRAY(SELECT DISTINCT r.parent FROM :SCHEMA.routes r))
         AND l.id >= nested_first AND l.id < own_first AND l.txid = xid
      RETURNING l.*
    )
    INSERT INTO :SCHEMA.log (txid, relid, op, changed, new, old, shape, written_at, wake)
      SELECT m.txid, m.relid, m.op, m.changed, m.new, m.old, m.shape, m.written_at, m.wake FROM moved m ORDER BY m.id;
    PERFORM set_config(nested_note, '', true);
  END IF;
  IF styles IS NOT NULL THEN
    PERFORM :SCHEMA.restore_output(styles);
  END IF;
  IF depth > 1 AND coalesce(current_setting('pgtide.nested_' || :SCHEMA_KEY || '_' || (depth - 1), true), '') = '' THEN
    PERFORM set_config('pgtide.nested_' || :SCHEMA_KEY || '_' || (depth - 1), own_first::text, true);
  END IF;
  RETURN NULL;
END
$$;
