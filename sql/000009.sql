-- pgtide schema, version 9: less work per single-row statement.

-- perf of a writer's backend doing autocommit single-row INSERTs into a watched table
-- (bench/README.md "Closing: every row against its target") put two avoidable costs in
-- every statement that writes the log: the CHECK on log.op, which PostgreSQL reads back
-- from the catalog and plans anew for each statement that inserts (4.5% of the backend's
-- CPU), and the row_number() window that marks a statement's first row, set up and run
-- for a statement of one row too (6%). Only pgtide's own functions write the log (no
-- role is granted INSERT on it), so the CHECK guarded nothing a reader meets; and a
-- one-row INSERT into the watched table now logs its row without the window. Together
-- 301 -> 271 us of backend CPU per INSERT (pgbench, 8 alternating runs).
ALTER TABLE :SCHEMA.log DROP CONSTRAINT IF EXISTS log_op_check;

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
  -- 0, 1, or 2 for more than one: the statement's rows, as far as it matters here.
  seen integer;
BEGIN
  -- A statement that changed no row must not give a read-only transaction an xid.
  IF TG_OP = 'INSERT' THEN
    PERFORM FROM new_rows LIMIT 2;
  ELSE
    PERFORM FROM old_rows LIMIT 2;
  END IF;
  GET DIAGNOSTICS seen = ROW_COUNT;
  IF seen = 0 THEN
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
  IF TG_OP = 'INSERT' AND route.insert_sql IS NULL AND seen = 1 THEN
    -- One row is its statement's first: no window to find it.
    INSERT INTO :SCHEMA.log (txid, relid, op, new, shape, written_at, wake)
      SELECT xid, TG_RELID, 'i', ROW(n.*)::text, route.shape, written, true FROM new_rows n;
  ELSIF TG_OP = 'INSERT' AND route.insert_sql IS NULL THEN
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
