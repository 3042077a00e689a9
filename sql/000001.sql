-- pgtide schema, version 1.
-- Placeholders: :SCHEMA is the quoted schema identifier, :CHANNEL the schema name as a
-- string literal (also the NOTIFY channel), :SCHEMA_LITERAL_IDENT the quoted identifier
-- as a literal, :SCHEMA_KEY a short hex key of the schema name (for setting names).

REVOKE ALL ON SCHEMA :SCHEMA FROM PUBLIC;

-- One append-only log for every watched table.
--
-- A change is readable once its own transaction has committed, and not before: readers
-- work like PgQ's. A reader remembers the snapshot it last read at (its base) and reads,
-- at a newer snapshot, the rows whose transaction is visible there but was not visible
-- in the base (pg_visible_in_snapshot on txid). That set, a "batch", is read in id order.
-- Two properties make this exact:
--  1. Nothing is skipped or read twice: every committed transaction becomes visible in
--     exactly one step from one snapshot to the next, whatever else is still open.
--  2. Per row, batches then ids follow commit order: a second change to a row is written
--     after the first committed, so it is either in a later batch or, in the same batch,
--     it took a larger id (ids come from one sequence, CACHE 1, in real time).
-- A long transaction delays only its own changes (and pruning), never anyone else's.
CREATE TABLE :SCHEMA.log (
  id bigint GENERATED ALWAYS AS IDENTITY,
  -- The writing transaction (top level), from pg_current_xact_id().
  txid xid8 NOT NULL,
  relid oid NOT NULL,
  -- 't': TRUNCATE of the whole table; 's': its columns changed (the shape says how).
  op "char" NOT NULL CHECK (op IN ('i', 'u', 'd', 't', 's')),
  -- Columns whose stored value differs; NULL for insert and delete (every column).
  changed text[],
  -- The row after the change (insert, update) and before it (update, delete), as record
  -- text: each column as PostgreSQL prints it (the type's output function), which the
  -- reader decodes with the application's own type parsers, as if it had selected the
  -- row. Cheaper to write than json, and exact.
  new text,
  old text,
  -- Which columns, of which types, `new` and `old` have (see shapes).
  shape integer,
  written_at timestamptz NOT NULL,
  -- True on the first row of each capturing statement: it arms the commit-time wake-up
  -- (see wake_readers). NULL elsewhere, which costs no space.
  wake boolean,
  -- Batches are read in id order per table.
  PRIMARY KEY (relid, id)
);
-- Where a batch starts, by transaction: (relid, txid, id), so the lowest id of one
-- transaction is one index probe and of the transactions since a snapshot one range.
CREATE INDEX log_txid ON :SCHEMA.log (relid, txid, id);

-- A shape says which columns, of which types (domains as their base type, as the wire
-- reports them), a logged row has; DDL makes a new one.
CREATE TABLE :SCHEMA.shapes (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  relid oid NOT NULL,
  columns text[] NOT NULL,
  types oid[] NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Eras of transaction ids. Snapshots and txids compare only within one cluster's xid
-- space; a dump restored into another cluster, or a server whose identity changed,
-- starts a new one. Log ids continue across (pg_dump restores the sequence), so an era
-- is a range of log ids: from its first_id up to the next era's.
CREATE TABLE :SCHEMA.eras (
  era integer PRIMARY KEY,
  system_identifier bigint NOT NULL,
  first_id bigint NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now()
);

-- The current era, started first if this server's identity is not the current era's.
-- Capture runs it once per session before its first write, so no row of a new era can
-- be written before the era exists; connect() runs it too. It also notes the session's
-- default TimeZone for capture (see canonical_output), and follows restored tables.
CREATE FUNCTION :SCHEMA.current_era()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  server bigint := (SELECT system_identifier FROM pg_control_system());
  latest :SCHEMA.eras;
BEGIN
  SELECT * INTO latest FROM :SCHEMA.eras ORDER BY era DESC LIMIT 1;
  IF latest.system_identifier IS DISTINCT FROM server THEN
    PERFORM pg_advisory_xact_lock(hashtext(:CHANNEL || ':era'));
    SELECT * INTO latest FROM :SCHEMA.eras ORDER BY era DESC LIMIT 1;
    IF latest.system_identifier IS DISTINCT FROM server THEN
      INSERT INTO :SCHEMA.eras (era, system_identifier, first_id)
        SELECT coalesce(latest.era, 0) + 1, server, coalesce(max(l.id), 0) + 1 FROM :SCHEMA.log l
        RETURNING * INTO latest;
    END IF;
  END IF;
  IF EXISTS (SELECT FROM :SCHEMA.restored_tables()) THEN
    PERFORM pg_advisory_xact_lock(hashtext(:CHANNEL || ':era'));
    PERFORM :SCHEMA.follow_restored_tables();
  END IF;
  PERFORM set_config('pgtide.timezone_' || :SCHEMA_KEY, (SELECT ps.reset_val FROM pg_settings ps WHERE ps.name = 'TimeZone'), false);
  PERFORM set_config('pgtide.era_' || :SCHEMA_KEY, latest.era::text, false);
  RETURN latest.era;
END
$$;

-- Watched tables: one row per table with the union of what its watchers need.
CREATE TABLE :SCHEMA.watched (
  relid oid PRIMARY KEY,
  schema_name name NOT NULL,
  table_name name NOT NULL,
  key_columns text[] NOT NULL,
  -- Updates are captured only when one of these changes; NULL means every column.
  columns text[],
  -- The update capture statement, generated from the catalog by :SCHEMA.watch().
  update_sql text NOT NULL,
  -- The shape its rows are logged in now.
  shape integer,
  watched_at timestamptz NOT NULL DEFAULT now()
);

-- Every relation whose writes are captured: a watched table, and each partition of a
-- watched partitioned table (written to directly, a partition fires only its own
-- triggers). Changes are logged under the watched table, in its shape.
CREATE TABLE :SCHEMA.routes (
  relid oid PRIMARY KEY,
  parent oid NOT NULL,
  -- The parent's shape, which this relation's rows are logged in.
  shape integer NOT NULL,
  -- The statements capture() runs for this relation; insert/delete NULL for the watched
  -- table itself, which capture() logs with a static (plan-cached) statement.
  insert_sql text,
  delete_sql text,
  update_sql text NOT NULL
);



-- Durable consumers: a named position in the changes of one table (changes$) or of
-- several (transactions$). A position is what has
-- been delivered: in era `era`, every change whose transaction is visible in `base`,
-- plus, while a batch is under way, the changes visible in `upto` but not in `base`
-- with ids up to `after_id`. Earlier eras are delivered whole.
CREATE TABLE :SCHEMA.consumers (
  name text PRIMARY KEY,
  relids oid[] NOT NULL,
  era integer NOT NULL,
  base pg_snapshot NOT NULL,
  upto pg_snapshot,
  after_id bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  acknowledged_at timestamptz NOT NULL DEFAULT now(),
  -- Set by prune when the consumer fell more than maxLag changes behind: it no longer
  -- holds the log, and resuming it fails until it is dropped.
  expired_at timestamptz
);

-- Whether a change (its era, txid and id) is covered by a position (see consumers).
CREATE FUNCTION :SCHEMA.delivered(era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                  change_era integer, txid xid8, id bigint)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT change_era < era
      OR (change_era = era
          AND (pg_catalog.pg_visible_in_snapshot(txid, base)
               OR (upto IS NOT NULL AND id <= after_id AND pg_catalog.pg_visible_in_snapshot(txid, upto))))
$$;

-- The era of a log id.
CREATE FUNCTION :SCHEMA.era_of(id bigint)
RETURNS integer
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(max(e.era), 1) FROM :SCHEMA.eras e WHERE e.first_id <= id
$$;

-- One page of one table's batch in era `era`: the rows whose transaction is visible in
-- `upto` and not in `base`, after `after_id` (NULL: from the batch's first row), in id
-- order. `upto` NULL means this statement's snapshot, or, once a later era has begun
-- (`closed`), every transaction of this one. Returns the snapshot `upto` stood for, and
-- with `check_pending`, whether a writer of this table that left the NOTIFY to another
-- was still committing before that snapshot was taken (see wake_readers): the caller
-- reads again soon then.
--
-- Where a batch starts is found through log_txid: its transactions are those in progress
-- at `base` (pg_snapshot_xip) or started after it (txid >= xmax), so the id walk that
-- follows starts at their lowest id, not at the start of the log.
CREATE FUNCTION :SCHEMA.read_batch(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
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
      -- The walk by txid, not by id: ORDER BY the index's columns keeps the planner on
      -- log_txid (a plain min(id) would walk the primary key from the era's first id).
      SELECT CASE
        WHEN after_id IS NOT NULL THEN after_id
        WHEN pg_snapshot_xmax(base) <= '3'::xid8 THEN batch.lo - 1
        ELSE least(
          (SELECT min(f.id) FROM (
             SELECT c.id FROM :SCHEMA.log c
              WHERE c.relid = rel AND c.txid >= pg_snapshot_xmax(base) AND c.id >= batch.lo AND c.id < batch.hi
              ORDER BY c.relid, c.txid, c.id OFFSET 0) f),
          (SELECT min(f.id) FROM pg_snapshot_xip(base) x CROSS JOIN LATERAL (
             SELECT c.id FROM :SCHEMA.log c
              WHERE c.relid = rel AND c.txid = x AND c.id >= batch.lo AND c.id < batch.hi
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

-- Which of these tables have changes, in the current era, that their base snapshot does
-- not cover: one cheap query for every idle table of a process, not a read per table.
CREATE FUNCTION :SCHEMA.tables_with_news(rels oid[], bases pg_snapshot[])
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
                  WHERE l.relid = r.rel AND l.txid >= pg_snapshot_xmax(r.base) AND l.id >= era.lo
                  ORDER BY l.relid, l.txid, l.id)
      OR EXISTS (SELECT FROM pg_snapshot_xip(r.base) x
                  WHERE EXISTS (SELECT FROM :SCHEMA.log l WHERE l.relid = r.rel AND l.txid = x AND l.id >= era.lo))
$$;

-- The one capture function behind every captured relation's row-changing triggers.
--
-- Per-row order with the application's own triggers: an AFTER ROW trigger of a statement
-- runs before that statement's capture, so what it writes (say, the same row again) would
-- be logged first. So a capture run inside a trigger (pg_trigger_depth() > 1) notes the
-- first log id it wrote for the statement one level up, and that statement's capture,
-- after logging its own rows, moves what was logged since below its own rows' ids to
-- after them (same transaction, same order among themselves). A BEFORE STATEMENT trigger
-- (mark_statement) clears the note at the start of each statement, so only writes made
-- during the statement are moved.
CREATE FUNCTION :SCHEMA.capture() RETURNS trigger
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
      DELETE FROM :SCHEMA.log l WHERE l.txid = xid AND l.id >= nested_first AND l.id < own_first RETURNING l.*
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

-- Record text is written in the writer's session, and its output follows that session's
-- DateStyle, IntervalStyle, extra_float_digits, bytea_output and TimeZone (a composite or
-- range holding a timestamptz is returned as text). The reader parses the server's
-- defaults (what `pg` expects, and what its own sessions print), so capture switches to
-- them for the statement when the writer chose others, and back after:
-- canonical_output() returns the settings to restore.
CREATE FUNCTION :SCHEMA.canonical_output()
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  current text[] := ARRAY[current_setting('DateStyle'), current_setting('IntervalStyle'),
                          current_setting('extra_float_digits'), current_setting('bytea_output'),
                          current_setting('TimeZone')];
BEGIN
  PERFORM set_config('DateStyle', 'ISO, ' || coalesce(nullif(split_part(current[1], ', ', 2), ''), 'MDY'), true);
  PERFORM set_config('IntervalStyle', 'postgres', true);
  PERFORM set_config('extra_float_digits', '1', true);
  PERFORM set_config('bytea_output', 'hex', true);
  PERFORM set_config('TimeZone', coalesce(current_setting('pgtide.timezone_' || :SCHEMA_KEY, true),
                                          (SELECT ps.reset_val FROM pg_settings ps WHERE ps.name = 'TimeZone')), true);
  RETURN current;
END
$$;

CREATE FUNCTION :SCHEMA.restore_output(styles text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF styles IS NOT NULL THEN
    PERFORM set_config('DateStyle', styles[1], true);
    PERFORM set_config('IntervalStyle', styles[2], true);
    PERFORM set_config('extra_float_digits', styles[3], true);
    PERFORM set_config('bytea_output', styles[4], true);
    PERFORM set_config('TimeZone', styles[5], true);
  END IF;
END
$$;

-- The start of a statement on a captured relation: forget notes of earlier statements
-- at this depth (see capture()).
CREATE FUNCTION :SCHEMA.mark_statement() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  note text := 'pgtide.nested_' || :SCHEMA_KEY || '_' || pg_trigger_depth();
BEGIN
  IF coalesce(current_setting(note, true), '') <> '' THEN
    PERFORM set_config(note, '', true);
  END IF;
  RETURN NULL;
END
$$;

-- TRUNCATE is a change too. A watched table's AFTER TRUNCATE logs one 't' (a consumer
-- clears what it holds of the table). A partition truncated on its own logs, BEFORE,
-- a delete of each of its rows under the parent, since the parent's other rows stay;
-- truncated as part of its parent, it leaves that to the parent's 't'.
CREATE FUNCTION :SCHEMA.capture_truncate() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  route :SCHEMA.routes;
  through_parent text;
  styles text[];
BEGIN
  SELECT r.* INTO route FROM :SCHEMA.routes r WHERE r.relid = TG_RELID;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF coalesce(current_setting('pgtide.era_' || :SCHEMA_KEY, true), '') = '' THEN
    PERFORM :SCHEMA.current_era();
  END IF;
  through_parent := 'pgtide.truncating_' || :SCHEMA_KEY || '_' || route.parent::text;
  IF TG_WHEN = 'BEFORE' THEN
    IF route.relid = route.parent THEN
      PERFORM set_config(through_parent, 'yes', true);
    ELSIF coalesce(current_setting(through_parent, true), '') <> 'yes' THEN
      styles := :SCHEMA.canonical_output();
      EXECUTE format('INSERT INTO %s.log (txid, relid, op, old, shape, written_at, wake)
                      SELECT $1, %s::oid, ''d'', %s, %s, clock_timestamp(), CASE WHEN row_number() OVER () = 1 THEN true END
                        FROM %s o',
                     :SCHEMA_LITERAL_IDENT, route.parent::oid,
                     :SCHEMA.record_text(route.parent, 'o'),
                     route.shape, TG_RELID::regclass)
        USING pg_current_xact_id();
      PERFORM :SCHEMA.restore_output(styles);
    END IF;
  ELSIF route.relid = route.parent THEN
    INSERT INTO :SCHEMA.log (txid, relid, op, written_at, wake)
      VALUES (pg_current_xact_id(), TG_RELID, 't', clock_timestamp(), true);
    PERFORM set_config(through_parent, '', true);
  END IF;
  RETURN NULL;
END
$$;

-- The wake-up, run at commit (a deferred constraint trigger on the log, once per
-- transaction and table). Every writer holds the "pending" lock in shared mode until its
-- transaction ends: a reader that finds it taken reads again soon (read_batch's
-- check_pending). NOTIFY is only a hint, and it serialises committers on a cluster-wide
-- lock, so of the transactions committing at the same moment one sends it: whoever gets
-- the second lock. Two cases send none and leave it to the pending lock and the poll:
-- PREPARE TRANSACTION (it refuses a transaction that notified; the pending lock is then
-- held until COMMIT/ROLLBACK PREPARED), and SET CONSTRAINTS ... IMMEDIATE, which fires
-- this before commit (sending then would hold the NOTIFY lock for the rest of the
-- transaction, and fail a later PREPARE). current_query() is NULL at an
-- extended-protocol Sync, which commits too.
CREATE FUNCTION :SCHEMA.wake_readers() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  woken text := 'pgtide.woken_' || :SCHEMA_KEY || '_' || NEW.relid::text;
BEGIN
  IF current_setting(woken, true) = 'yes' THEN
    RETURN NULL;
  END IF;
  PERFORM set_config(woken, 'yes', true);
  PERFORM pg_advisory_xact_lock_shared(hashtext(:CHANNEL || ':pending'), NEW.relid::integer);
  IF coalesce(current_query() ~* 'prepare\s+transaction|set\s+constraints', false) THEN
    RETURN NULL;
  END IF;
  IF pg_try_advisory_xact_lock(hashtext(:CHANNEL), NEW.relid::integer) THEN
    PERFORM pg_notify(:CHANNEL, NEW.relid::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER wake_readers AFTER INSERT ON :SCHEMA.log
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.wake) EXECUTE FUNCTION :SCHEMA.wake_readers();
-- The wake-up fires under every session_replication_role too.
ALTER TABLE :SCHEMA.log ENABLE ALWAYS TRIGGER wake_readers;

-- The SQL for the record text of row `alias` in the columns of `parent`, in its order: a
-- partition's row logged in its watched table's shape.
CREATE FUNCTION :SCHEMA.record_text(parent regclass, alias text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT 'ROW(' || string_agg(format('%I.%I', alias, a.attname), ', ' ORDER BY a.attnum) || ')::text'
    FROM pg_attribute a WHERE a.attrelid = parent AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- The shape of a relation's rows now: the latest one with these columns and types.
CREATE FUNCTION :SCHEMA.shape_of(rel regclass)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  names text[];
  kinds oid[];
  found integer;
BEGIN
  SELECT array_agg(a.attname::text ORDER BY a.attnum), array_agg(coalesce(nullif(t.typbasetype, 0), t.oid) ORDER BY a.attnum)
    INTO names, kinds
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
   WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
  SELECT s.id INTO found FROM :SCHEMA.shapes s
   WHERE s.relid = rel AND s.columns = names AND s.types = kinds ORDER BY s.id DESC LIMIT 1;
  IF found IS NULL THEN
    INSERT INTO :SCHEMA.shapes (relid, columns, types) VALUES (rel, names, kinds) RETURNING id INTO found;
  END IF;
  RETURN found;
END
$$;

-- The capture statements of one relation (`rel`, the watched table `parent` or one of
-- its partitions) for one operation. Rows are logged as record text in the parent's
-- column order, under the parent's oid and shape. An update is a change when a value's
-- stored image differs, not only when `=` says so (numeric 1.0 -> 1.000, jsonb
-- {"a":1} -> {"a":1.00}, 'alice' -> 'ALICE' under a nondeterministic collation): each
-- column is compared with IS DISTINCT FROM where the type's btree equality implies
-- equal images (btequalimage), and by image (record_image_ne) otherwise. A row whose key
-- changed appears as a delete of the old key and an insert of the new one.
CREATE FUNCTION :SCHEMA.capture_sql(rel regclass, parent regclass, op text, key_columns text[], watched_columns text[], shape integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  row_of_n text;
  row_of_o text;
  join_on text;
  changed_list text;
  watched_test text;
  first_key text := quote_ident(key_columns[1]);
  wake text := 'CASE WHEN row_number() OVER () = 1 THEN true END';
BEGIN
  IF rel = parent THEN
    row_of_n := 'ROW(n.*)::text';
    row_of_o := 'ROW(o.*)::text';
  ELSE
    row_of_n := :SCHEMA.record_text(parent, 'n');
    row_of_o := :SCHEMA.record_text(parent, 'o');
  END IF;
  IF op = 'insert' THEN
    RETURN format('INSERT INTO %s.log (txid, relid, op, new, shape, written_at, wake) SELECT $1, %s::oid, ''i'', %s, %s, $2, %s FROM new_rows n',
                  :SCHEMA_LITERAL_IDENT, parent::oid, row_of_n, shape, wake);
  ELSIF op = 'delete' THEN
    RETURN format('INSERT INTO %s.log (txid, relid, op, old, shape, written_at, wake) SELECT $1, %s::oid, ''d'', %s, %s, $2, %s FROM old_rows o',
                  :SCHEMA_LITERAL_IDENT, parent::oid, row_of_o, shape, wake);
  END IF;

  WITH cols AS (
    SELECT a.attname::text AS name, a.attnum AS ord,
           EXISTS (
             SELECT FROM pg_opclass oc
               JOIN pg_am am ON am.oid = oc.opcmethod
               JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 4
                                AND ap.amproclefttype = oc.opcintype AND ap.amprocrighttype = oc.opcintype
              WHERE am.amname = 'btree' AND oc.opcdefault
                AND oc.opcintype = coalesce(nullif(t.typbasetype, 0), t.oid)
                AND (ap.amproc = 'btequalimage'::regproc
                     OR (ap.amproc = 'btvarstrequalimage'::regproc
                         AND coalesce((SELECT c.collisdeterministic FROM pg_collation c WHERE c.oid = a.attcollation), true)))
           ) AS image_equal
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
  ), tests AS (
    SELECT name, ord,
           CASE WHEN image_equal THEN format('n.%1$I IS DISTINCT FROM o.%1$I', name)
                ELSE format('record_image_ne(ROW(n.%1$I), ROW(o.%1$I))', name) END AS differs
      FROM cols
  )
  SELECT
    string_agg(format('CASE WHEN %s THEN %L END', differs, name), ', ' ORDER BY ord),
    string_agg(differs, ' OR ' ORDER BY ord) FILTER (WHERE watched_columns IS NULL OR name = ANY (watched_columns))
  INTO changed_list, watched_test
  FROM tests;
  -- Every watched column was dropped: only key changes (delete + insert) remain.
  watched_test := coalesce(watched_test, 'false');
  SELECT string_agg(format('n.%1$I = o.%1$I', k), ' AND ') INTO join_on FROM unnest(key_columns) k;

  RETURN format(
    $f$INSERT INTO %1$s.log (txid, relid, op, changed, new, old, shape, written_at, wake)
SELECT $1, %2$s::oid,
  CASE WHEN o.%3$s IS NULL THEN 'i' WHEN n.%3$s IS NULL THEN 'd' ELSE 'u' END::"char",
  CASE WHEN o.%3$s IS NOT NULL AND n.%3$s IS NOT NULL THEN array_remove(ARRAY[%4$s]::text[], NULL) END,
  CASE WHEN n.%3$s IS NOT NULL THEN %7$s END,
  CASE WHEN o.%3$s IS NOT NULL THEN %8$s END,
  %9$s, $2, %10$s
FROM old_rows o FULL JOIN new_rows n ON %5$s
WHERE o.%3$s IS NULL OR n.%3$s IS NULL OR %6$s$f$,
    :SCHEMA_LITERAL_IDENT, parent::oid, first_key, changed_list, join_on, watched_test, row_of_n, row_of_o, shape, wake);
END
$$;

-- Install (or widen) capture for one table, and for each of its partitions. Callers
-- validate first for friendly errors; this re-checks under the table's lock so a
-- concurrent ALTER cannot slip in between. Triggers are enabled ALWAYS: they fire
-- under session_replication_role = replica too (pg_restore --disable-triggers, logical
-- replication apply, bulk loaders). Only ALTER TABLE ... DISABLE TRIGGER stops them.
CREATE FUNCTION :SCHEMA.watch(rel regclass, watch_columns text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  keys text[];
  merged text[];
  existing :SCHEMA.watched;
  shape integer;
  previous_shape integer;
  member regclass;
  trigger_prefix text := :CHANNEL || '_capture_';
  op text;
BEGIN
  -- Held to commit: no concurrent ALTER TABLE can change the key or columns under us.
  EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel);
  SELECT array_agg(a.attname::text ORDER BY k.ord) INTO keys
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
  WHERE i.indrelid = rel AND i.indisprimary;
  IF keys IS NULL THEN
    RAISE EXCEPTION 'table % has no primary key', rel USING ERRCODE = 'PT001';
  END IF;

  SELECT * INTO existing FROM :SCHEMA.watched w WHERE w.relid = rel FOR UPDATE;
  IF FOUND AND (existing.columns IS NULL OR watch_columns IS NULL) THEN
    merged := NULL;
  ELSIF FOUND THEN
    SELECT array_agg(DISTINCT c ORDER BY c) INTO merged FROM unnest(existing.columns || watch_columns) c;
  ELSE
    SELECT array_agg(DISTINCT c ORDER BY c) INTO merged FROM unnest(watch_columns) c;
  END IF;
  previous_shape := existing.shape;
  shape := :SCHEMA.shape_of(rel);

  INSERT INTO :SCHEMA.watched AS w (relid, schema_name, table_name, key_columns, columns, update_sql, shape)
  SELECT rel, n.nspname, c.relname, keys, merged, :SCHEMA.capture_sql(rel, rel, 'update', keys, merged, shape), shape
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = rel
  ON CONFLICT (relid) DO UPDATE
    SET schema_name = excluded.schema_name, table_name = excluded.table_name,
        key_columns = excluded.key_columns, columns = excluded.columns,
        update_sql = excluded.update_sql, shape = excluded.shape;

  -- Partitions that left the table stop being captured as part of it.
  FOR member IN SELECT r.relid::regclass FROM :SCHEMA.routes r
                 WHERE r.parent = rel AND r.relid <> rel
                   AND r.relid NOT IN (SELECT t.relid FROM pg_partition_tree(rel) t) LOOP
    PERFORM :SCHEMA.drop_capture(member);
  END LOOP;

  FOR member IN SELECT t.relid FROM pg_partition_tree(rel) t
                  JOIN pg_class c ON c.oid = t.relid WHERE c.relkind IN ('r', 'p')
                 UNION SELECT rel LOOP
    INSERT INTO :SCHEMA.routes AS r (relid, parent, shape, insert_sql, delete_sql, update_sql)
    VALUES (member, rel, shape,
            CASE WHEN member <> rel THEN :SCHEMA.capture_sql(member, rel, 'insert', keys, merged, shape) END,
            CASE WHEN member <> rel THEN :SCHEMA.capture_sql(member, rel, 'delete', keys, merged, shape) END,
            :SCHEMA.capture_sql(member, rel, 'update', keys, merged, shape))
    ON CONFLICT (relid) DO UPDATE
      SET parent = excluded.parent, shape = excluded.shape, insert_sql = excluded.insert_sql, delete_sql = excluded.delete_sql,
          update_sql = excluded.update_sql;
    IF NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = member AND t.tgname = trigger_prefix || 'insert') THEN
      EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s.capture()',
        trigger_prefix || 'insert', member, :SCHEMA_LITERAL_IDENT);
      EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s.capture()',
        trigger_prefix || 'update', member, :SCHEMA_LITERAL_IDENT);
      EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION %s.capture()',
        trigger_prefix || 'delete', member, :SCHEMA_LITERAL_IDENT);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = member AND t.tgname = trigger_prefix || 'begin') THEN
      EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.mark_statement()',
        trigger_prefix || 'begin', member, :SCHEMA_LITERAL_IDENT);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = member AND t.tgname = trigger_prefix || 'truncate_before') THEN
      EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.capture_truncate()',
        trigger_prefix || 'truncate_before', member, :SCHEMA_LITERAL_IDENT);
      EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.capture_truncate()',
        trigger_prefix || 'truncate_after', member, :SCHEMA_LITERAL_IDENT);
    END IF;
    FOR op IN SELECT t.tgname FROM pg_trigger t
               WHERE t.tgrelid = member AND t.tgenabled <> 'A'
                 AND t.tgname IN (SELECT trigger_prefix || o
                                    FROM unnest(ARRAY['begin', 'insert', 'update', 'delete', 'truncate_before', 'truncate_after']) o) LOOP
      EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', member, op);
    END LOOP;
  END LOOP;

  -- Streams learn of new columns in order with the changes around them.
  IF previous_shape IS NOT NULL AND previous_shape <> shape THEN
    INSERT INTO :SCHEMA.log (txid, relid, op, shape, written_at, wake)
      VALUES (pg_current_xact_id(), rel, 's', shape, clock_timestamp(), true);
  END IF;
END
$$;

-- Removes capture from one relation (a watched table or a partition of one).
CREATE FUNCTION :SCHEMA.drop_capture(rel regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  trigger_prefix text := :CHANNEL || '_capture_';
  op text;
BEGIN
  FOREACH op IN ARRAY ARRAY['begin', 'insert', 'update', 'delete', 'truncate_before', 'truncate_after'] LOOP
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trigger_prefix || op, rel);
  END LOOP;
  DELETE FROM :SCHEMA.routes r WHERE r.relid = rel;
END
$$;

-- Remove capture from one table and its partitions. Its changes already in the log stay
-- until pruned.
CREATE FUNCTION :SCHEMA.unwatch(rel regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
BEGIN
  FOR member IN SELECT r.relid::regclass FROM :SCHEMA.routes r WHERE r.parent = rel UNION SELECT rel LOOP
    PERFORM :SCHEMA.drop_capture(member);
  END LOOP;
  DELETE FROM :SCHEMA.watched w WHERE w.relid = rel;
  RETURN FOUND;
END
$$;

-- Follows DDL: after ALTER TABLE on a watched table (or on a partition of one, or
-- ATTACH/DETACH, or CREATE TABLE ... PARTITION OF) the table is watched again, which
-- regenerates its statements, captures new partitions and logs a new shape; a change
-- that removes the primary key is refused; a dropped table leaves the registry.
CREATE FUNCTION :SCHEMA.follow_ddl() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  w record;
  following text := 'pgtide.following_ddl_' || :SCHEMA_KEY;
BEGIN
  -- watch() itself alters tables (ENABLE ALWAYS TRIGGER): do not follow our own steps.
  IF coalesce(current_setting(following, true), '') = 'yes' THEN
    RETURN;
  END IF;
  IF TG_EVENT = 'sql_drop' THEN
    DELETE FROM :SCHEMA.routes r
     WHERE r.relid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                        WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
    DELETE FROM :SCHEMA.watched ws
     WHERE ws.relid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
    RETURN;
  END IF;
  FOR w IN
    SELECT DISTINCT ws.relid, ws.columns FROM :SCHEMA.watched ws
     WHERE ws.relid IN (
       SELECT c.objid FROM pg_event_trigger_ddl_commands() c WHERE c.classid = 'pg_class'::regclass
       UNION SELECT r.parent FROM :SCHEMA.routes r
              WHERE r.relid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() c WHERE c.classid = 'pg_class'::regclass)
       UNION SELECT a.relid FROM pg_event_trigger_ddl_commands() c
              CROSS JOIN LATERAL pg_partition_ancestors(c.objid) a
              WHERE c.classid = 'pg_class'::regclass)
  LOOP
    PERFORM set_config(following, 'yes', true);
    BEGIN
      PERFORM :SCHEMA.watch(w.relid::regclass, w.columns);
    EXCEPTION WHEN SQLSTATE 'PT001' THEN
      RAISE EXCEPTION 'pgtide watches table %, which needs a primary key', w.relid::regclass
        USING HINT = 'unwatch the table first (tide.unwatch), or keep a primary key';
    END;
    PERFORM set_config(following, '', true);
  END LOOP;
END
$$;

-- Event triggers need a superuser; without one, re-run watch() after altering a watched table.
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE format('CREATE EVENT TRIGGER %I ON ddl_command_end WHEN TAG IN (''ALTER TABLE'', ''CREATE TABLE'') EXECUTE FUNCTION %s.follow_ddl()',
      :CHANNEL || '_follow_alter', :SCHEMA_LITERAL_IDENT);
    EXECUTE format('CREATE EVENT TRIGGER %I ON sql_drop WHEN TAG IN (''DROP TABLE'', ''DROP SCHEMA'') EXECUTE FUNCTION %s.follow_ddl()',
      :CHANNEL || '_follow_drop', :SCHEMA_LITERAL_IDENT);
  END IF;
END
$$;

-- A restored dump: the tables whose registered oid now names no relation, or another
-- one, while a table of the registered name exists.
CREATE FUNCTION :SCHEMA.restored_tables()
RETURNS TABLE (old_relid oid, new_relid oid, columns text[])
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT w.relid, r.oid, w.columns
    FROM :SCHEMA.watched w
   CROSS JOIN LATERAL (SELECT to_regclass(format('%I.%I', w.schema_name, w.table_name))::oid AS oid) r
   WHERE r.oid IS NOT NULL AND r.oid <> w.relid
     AND NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = w.relid AND c.relname = w.table_name AND n.nspname = w.schema_name)
$$;

-- Moves the changes, consumers, shapes and registry of restored tables to their new
-- oids, all in one statement each (an old oid may be another table's new one); their
-- routes go (watching them again makes new ones).
CREATE FUNCTION :SCHEMA.follow_restored_tables()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  olds oid[];
  news oid[];
  moved record;
BEGIN
  SELECT array_agg(r.old_relid), array_agg(r.new_relid) INTO olds, news FROM :SCHEMA.restored_tables() r;
  IF olds IS NULL THEN
    RETURN;
  END IF;
  UPDATE :SCHEMA.log l SET relid = m.new FROM unnest(olds, news) AS m(old, new) WHERE l.relid = m.old;
  UPDATE :SCHEMA.consumers c
     SET relids = (SELECT array_agg(coalesce(m.new, u.relid) ORDER BY u.ord)
                     FROM unnest(c.relids) WITH ORDINALITY AS u(relid, ord)
                     LEFT JOIN unnest(olds, news) AS m(old, new) ON m.old = u.relid)
   WHERE c.relids && olds;
  UPDATE :SCHEMA.shapes s SET relid = m.new FROM unnest(olds, news) AS m(old, new) WHERE s.relid = m.old;
  DELETE FROM :SCHEMA.routes r WHERE r.parent = ANY (olds);
  FOR moved IN DELETE FROM :SCHEMA.watched w USING unnest(olds, news) AS m(old, new)
                WHERE w.relid = m.old RETURNING m.new, w.columns
  LOOP
    PERFORM :SCHEMA.watch(moved.new::regclass, moved.columns);
  END LOOP;
END
$$;

SELECT :SCHEMA.current_era();

REVOKE ALL ON ALL TABLES IN SCHEMA :SCHEMA FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :SCHEMA FROM PUBLIC;
