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
  op "char" NOT NULL CHECK (op IN ('i', 'u', 'd')),
  -- Columns whose value differs; NULL for insert and delete (every column).
  changed text[],
  -- The row after the change (insert, update). json from row_to_json: half the cost of
  -- jsonb per row, and the log is written far more often than it is queried.
  new json,
  -- The row before the change (update, delete).
  old json,
  written_at timestamptz NOT NULL,
  -- True on the first row of each capturing statement: it arms the commit-time wake-up
  -- (see wake_readers). NULL elsewhere, which costs no space.
  wake boolean,
  -- Batches are read in id order per table.
  PRIMARY KEY (relid, id)
);
-- Where a batch starts: the lowest id among the transactions that became visible.
CREATE INDEX log_txid ON :SCHEMA.log (relid, txid);

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
-- be written before the era exists; connect() runs it too.
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
  -- A restored dump gives its tables new oids: follow the watched tables by name.
  IF EXISTS (SELECT FROM :SCHEMA.restored_tables()) THEN
    PERFORM pg_advisory_xact_lock(hashtext(:CHANNEL || ':era'));
    PERFORM :SCHEMA.follow_restored_tables();
  END IF;
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
  watched_at timestamptz NOT NULL DEFAULT now()
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
CREATE FUNCTION :SCHEMA.read_page(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                  page_size integer, check_pending boolean)
RETURNS TABLE (snapshot text, closed boolean, pending boolean, id bigint, txid xid8, op "char",
               changed text[], new json, old json, written_ms float8)
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
  -- Before the snapshot below is taken: a writer that released this lock had committed.
  IF check_pending THEN
    IF pg_try_advisory_lock(hashtext(:CHANNEL || ':pending'), rel::integer) THEN
      PERFORM pg_advisory_unlock(hashtext(:CHANNEL || ':pending'), rel::integer);
    ELSE
      writers_committing := true;
    END IF;
  END IF;
  -- A new statement, so a new snapshot under READ COMMITTED: the one `upto` defaults to.
  -- A row of a later era is visible only with that era's row, so the bounds read here
  -- are exact for the rows read here.
  RETURN QUERY
    WITH bounds AS (
      SELECT coalesce((SELECT e.first_id FROM :SCHEMA.eras e WHERE e.era = read_page.era), 1) AS lo,
             (SELECT min(e.first_id) FROM :SCHEMA.eras e WHERE e.era > read_page.era) AS hi
    ),
    batch AS (
      SELECT b.lo, coalesce(b.hi, 9223372036854775807) AS hi, b.hi IS NOT NULL AS closed,
             coalesce(upto, CASE WHEN b.hi IS NOT NULL THEN '9223372036854775807:9223372036854775807:'::pg_snapshot END,
                      pg_current_snapshot()) AS s
        FROM bounds b
    ),
    start AS (
      SELECT CASE
        WHEN after_id IS NOT NULL THEN after_id
        WHEN pg_snapshot_xmax(base) <= '3'::xid8 THEN batch.lo - 1
        ELSE least(
          (SELECT min(c.id) FROM :SCHEMA.log c
            WHERE c.relid = rel AND c.txid >= pg_snapshot_xmax(base) AND c.id >= batch.lo AND c.id < batch.hi),
          (SELECT min(c.id) FROM :SCHEMA.log c
            WHERE c.relid = rel AND c.txid IN (SELECT pg_snapshot_xip(base)) AND c.id >= batch.lo AND c.id < batch.hi)
        ) - 1
      END AS after
      FROM batch
    )
    SELECT batch.s::text, batch.closed, writers_committing, l.id, l.txid, l.op, l.changed, l.new, l.old,
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
SET search_path = pg_catalog, pg_temp
AS $$
  WITH era AS (SELECT coalesce(max(e.first_id), 1) AS lo FROM :SCHEMA.eras e)
  SELECT r.rel FROM era, unnest(rels, bases) AS r(rel, base)
   WHERE EXISTS (SELECT FROM :SCHEMA.log l
                  WHERE l.relid = r.rel AND l.txid >= pg_snapshot_xmax(r.base) AND l.id >= era.lo)
      OR EXISTS (SELECT FROM :SCHEMA.log l
                  WHERE l.relid = r.rel AND l.txid IN (SELECT pg_snapshot_xip(r.base)) AND l.id >= era.lo)
$$;

-- The one capture function behind every watched table's triggers.
CREATE FUNCTION :SCHEMA.capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  xid xid8;
  written timestamptz;
  update_sql text;
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
  xid := pg_current_xact_id();
  written := clock_timestamp();
  IF TG_OP = 'INSERT' THEN
    INSERT INTO :SCHEMA.log (txid, relid, op, new, written_at, wake)
      SELECT xid, TG_RELID, 'i', row_to_json(n.*), written, CASE WHEN row_number() OVER () = 1 THEN true END
        FROM new_rows n;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO :SCHEMA.log (txid, relid, op, old, written_at, wake)
      SELECT xid, TG_RELID, 'd', row_to_json(o.*), written, CASE WHEN row_number() OVER () = 1 THEN true END
        FROM old_rows o;
  ELSE
    SELECT w.update_sql INTO update_sql FROM :SCHEMA.watched w WHERE w.relid = TG_RELID;
    IF update_sql IS NULL THEN
      RAISE EXCEPTION 'pgtide: % has capture triggers but is not in %.watched', TG_RELID::regclass, :CHANNEL
        USING HINT = 'watch the table again (tide.watch), or drop its pgtide triggers (tide.unwatch)';
    END IF;
    EXECUTE update_sql USING xid, written;
  END IF;
  RETURN NULL;
END
$$;

-- The wake-up, run at commit (a deferred constraint trigger on the log, once per
-- transaction and table). Every writer holds the "pending" lock in shared mode until its
-- transaction ends: a reader that finds it taken reads again soon (read_page's
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

-- The update capture statement for one table: a full join of the transition tables on
-- the primary key, per-column comparisons generated from the catalog. A row whose key
-- changed appears as a delete of the old key and an insert of the new one.
CREATE FUNCTION :SCHEMA.update_capture_sql(rel regclass, key_columns text[], watched_columns text[])
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  join_on text;
  changed_list text;
  watched_test text;
  first_key text := quote_ident(key_columns[1]);
BEGIN
  -- Each column is compared as itself, or as text when its type has no default
  -- equality (json, xml, point, ...), which IS DISTINCT FROM would reject.
  WITH cols AS (
    SELECT a.attname::text AS name, a.attnum AS ord,
           CASE WHEN EXISTS (
             SELECT FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod
             WHERE oc.opcdefault AND am.amname = 'btree'
               AND oc.opcintype = CASE WHEN t.typcategory = 'A' THEN t.typelem
                                       ELSE coalesce(nullif(t.typbasetype, 0), t.oid) END
           ) THEN '' ELSE '::text' END AS cast_to
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
  )
  SELECT
    string_agg(format('CASE WHEN n.%1$I%2$s IS DISTINCT FROM o.%1$I%2$s THEN %1$L END', name, cast_to), ', ' ORDER BY ord),
    string_agg(format('n.%1$I%2$s IS DISTINCT FROM o.%1$I%2$s', name, cast_to), ' OR ' ORDER BY ord)
      FILTER (WHERE watched_columns IS NULL OR name = ANY (watched_columns))
  INTO changed_list, watched_test
  FROM cols;
  -- Every watched column was dropped: only key changes (delete + insert) remain.
  watched_test := coalesce(watched_test, 'false');
  SELECT string_agg(format('n.%1$I = o.%1$I', k), ' AND ') INTO join_on FROM unnest(key_columns) k;

  RETURN format(
    $f$INSERT INTO %1$s.log (txid, relid, op, changed, new, old, written_at, wake)
SELECT $1, %2$s::oid,
  CASE WHEN o.%3$s IS NULL THEN 'i' WHEN n.%3$s IS NULL THEN 'd' ELSE 'u' END::"char",
  CASE WHEN o.%3$s IS NOT NULL AND n.%3$s IS NOT NULL THEN array_remove(ARRAY[%4$s]::text[], NULL) END,
  CASE WHEN n.%3$s IS NOT NULL THEN row_to_json(n.*) END,
  CASE WHEN o.%3$s IS NOT NULL THEN row_to_json(o.*) END,
  $2,
  CASE WHEN row_number() OVER () = 1 THEN true END
FROM old_rows o FULL JOIN new_rows n ON %5$s
WHERE o.%3$s IS NULL OR n.%3$s IS NULL OR %6$s$f$,
    :SCHEMA_LITERAL_IDENT, rel::oid, first_key, changed_list, join_on, watched_test);
END
$$;

-- TRUNCATE fires no row triggers: a watched table emptied by it would leave every
-- consumer and every live state with rows that no longer exist. Refuse it, clearly.
CREATE FUNCTION :SCHEMA.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION 'pgtide watches table %.%: TRUNCATE would bypass change capture', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = 'feature_not_supported',
          HINT = 'use DELETE (captured as deletes), or unwatch the table first';
END
$$;

-- Install (or widen) capture for one table. Callers validate first for friendly errors;
-- this re-checks under the table's lock so a concurrent ALTER cannot slip in between.
CREATE FUNCTION :SCHEMA.watch(rel regclass, watch_columns text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  keys text[];
  merged text[];
  existing :SCHEMA.watched;
  trigger_prefix text := :CHANNEL || '_capture_';
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

  INSERT INTO :SCHEMA.watched AS w (relid, schema_name, table_name, key_columns, columns, update_sql)
  SELECT rel, n.nspname, c.relname, keys, merged, :SCHEMA.update_capture_sql(rel, keys, merged)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = rel
  ON CONFLICT (relid) DO UPDATE
    SET schema_name = excluded.schema_name, table_name = excluded.table_name,
        key_columns = excluded.key_columns, columns = excluded.columns,
        update_sql = excluded.update_sql;

  IF NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgname = trigger_prefix || 'insert') THEN
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s.capture()',
      trigger_prefix || 'insert', rel, :SCHEMA_LITERAL_IDENT);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s.capture()',
      trigger_prefix || 'update', rel, :SCHEMA_LITERAL_IDENT);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION %s.capture()',
      trigger_prefix || 'delete', rel, :SCHEMA_LITERAL_IDENT);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.refuse_truncate()',
      trigger_prefix || 'truncate', rel, :SCHEMA_LITERAL_IDENT);
  END IF;
END
$$;

-- Remove capture from one table. Its changes already in the log stay until pruned.
CREATE FUNCTION :SCHEMA.unwatch(rel regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  trigger_prefix text := :CHANNEL || '_capture_';
  op text;
BEGIN
  FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trigger_prefix || op, rel);
  END LOOP;
  DELETE FROM :SCHEMA.watched w WHERE w.relid = rel;
  RETURN FOUND;
END
$$;

-- The generated update statement names columns, so it must follow DDL: after ALTER TABLE
-- on a watched table it is regenerated (a change that removes the primary key is refused,
-- with a message to unwatch first), and a dropped table leaves the registry.
CREATE FUNCTION :SCHEMA.follow_ddl() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  w record;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    DELETE FROM :SCHEMA.watched ws
     WHERE ws.relid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
    RETURN;
  END IF;
  FOR w IN
    SELECT ws.relid, ws.columns FROM :SCHEMA.watched ws
     WHERE ws.relid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() c WHERE c.classid = 'pg_class'::regclass)
  LOOP
    BEGIN
      PERFORM :SCHEMA.watch(w.relid::regclass, w.columns);
    EXCEPTION WHEN SQLSTATE 'PT001' THEN
      RAISE EXCEPTION 'pgtide watches table %, which needs a primary key', w.relid::regclass
        USING HINT = 'unwatch the table first (tide.unwatch), or keep a primary key';
    END;
  END LOOP;
END
$$;

-- Event triggers need a superuser; without one, re-run watch() after altering a watched table.
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE format('CREATE EVENT TRIGGER %I ON ddl_command_end WHEN TAG IN (''ALTER TABLE'') EXECUTE FUNCTION %s.follow_ddl()',
      :CHANNEL || '_follow_alter', :SCHEMA_LITERAL_IDENT);
    EXECUTE format('CREATE EVENT TRIGGER %I ON sql_drop WHEN TAG IN (''DROP TABLE'', ''DROP SCHEMA'') EXECUTE FUNCTION %s.follow_ddl()',
      :CHANNEL || '_follow_drop', :SCHEMA_LITERAL_IDENT);
  END IF;
END
$$;

-- Watched tables whose oid is gone while a table of that name exists: what a restored
-- dump (into this cluster or another) looks like.
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
     AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = w.relid)
$$;

-- Moves the changes, consumers and registry of restored tables to their new oids, all
-- in one statement each (an old oid may be another table's new one), and regenerates
-- their capture statements.
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
