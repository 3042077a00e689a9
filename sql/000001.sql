-- pgtide schema, version 1.
-- Placeholders: :SCHEMA is the quoted schema identifier, :CHANNEL the schema name as a
-- string literal (also the NOTIFY channel). The migrator substitutes both.

REVOKE ALL ON SCHEMA :SCHEMA FROM PUBLIC;

-- One append-only log for every watched table.
--
-- Delivery order is (pos, id), and a reader only takes rows with pos <= the xmin of its
-- own snapshot (the "horizon"). pos is computed by the capture trigger as
--   greatest(xmax of a fresh snapshot, own xid + 1)
-- which gives two properties:
--  1. pos > txid, so pos <= horizon implies the writer has finished; and every writer
--     still running (xid >= horizon) writes pos > horizon. So the rows at or below a
--     horizon are final and complete: a reader never skips a row that commits later.
--  2. For two successive changes A, B of the same row, B wrote after A committed, so
--     under READ COMMITTED B's (fresh) snapshot xmax >= A's pos: per-row order follows
--     commit order. Ties fall back to id, which is taken later for B. Under REPEATABLE
--     READ / SERIALIZABLE, B's snapshot may predate A's commit only when B (re)creates
--     a key A removed; capture() refuses that case with a serialization failure.
-- Ordering by txid alone would break 2 (a transaction takes its xid at its first write,
-- not at commit); ordering by id alone would break 1.
CREATE TABLE :SCHEMA.log (
  id bigint GENERATED ALWAYS AS IDENTITY,
  pos bigint NOT NULL,
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
  -- The reader's order; one btree per log row is all the write path pays for.
  PRIMARY KEY (relid, pos, id)
);
-- Lookups by id alone (from.after) are rare: a BRIN index costs writers next to nothing.
CREATE INDEX log_id ON :SCHEMA.log USING brin (id);

-- One page of one table's log in delivery order, after one position and up to another.
-- The planner settings pin the plan to an ordered walk of the primary key: right after
-- a bulk write the log has no statistics, and a bitmap scan plus sort would then read
-- the whole remaining log for every page. STABLE: it sees the calling statement's
-- snapshot, so a horizon computed there bounds exactly the rows visible here.
CREATE FUNCTION :SCHEMA.read_page(rel oid, after_pos bigint, after_id bigint, upto_pos bigint, upto_id bigint, page_size int)
RETURNS SETOF :SCHEMA.log
LANGUAGE sql
STABLE
SET enable_bitmapscan = off
SET enable_seqscan = off
SET enable_sort = off
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT * FROM :SCHEMA.log l
   WHERE l.relid = rel AND (l.pos, l.id) > (after_pos, after_id) AND (l.pos, l.id) <= (upto_pos, upto_id)
   ORDER BY l.pos, l.id
   LIMIT page_size
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
  -- Whether the statement's new rows share a key with another row version its snapshot
  -- sees (see capture()); run only outside READ COMMITTED.
  clash_sql text NOT NULL,
  watched_at timestamptz NOT NULL DEFAULT now()
);

-- Durable consumers: a named cursor into one table's changes.
CREATE TABLE :SCHEMA.consumers (
  name text PRIMARY KEY,
  relid oid NOT NULL,
  -- Exclusive lower bound of what the consumer still needs, in (pos, id) order.
  pos bigint NOT NULL,
  id bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  acknowledged_at timestamptz NOT NULL DEFAULT now(),
  -- Set by prune when the consumer fell more than maxLag changes behind: it no longer
  -- holds the log, and resuming it fails until it is dropped.
  expired_at timestamptz
);

-- The one capture function behind every watched table's triggers.
CREATE FUNCTION :SCHEMA.capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  xid xid8;
  position bigint;
  written timestamptz;
  registry record;
  clash boolean;
  strict_snapshot boolean;
  captured bigint;
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
  xid := pg_current_xact_id();
  -- Under READ COMMITTED this snapshot is taken now; see the comment on the log.
  position := greatest(pg_snapshot_xmax(pg_current_snapshot())::text::bigint, xid::text::bigint + 1);
  written := clock_timestamp();

  strict_snapshot := current_setting('transaction_isolation') <> 'read committed';
  IF TG_OP = 'UPDATE' OR (TG_OP = 'INSERT' AND strict_snapshot) THEN
    SELECT w.update_sql, w.clash_sql INTO registry FROM :SCHEMA.watched w WHERE w.relid = TG_RELID;
  END IF;
  -- Under REPEATABLE READ or SERIALIZABLE the snapshot can predate the commit that
  -- removed the previous version of a key this statement (re)creates; its position
  -- could then sort before that change. The snapshot still sees the old version, so
  -- the key shows up twice: refuse like a serialization failure, to be retried.
  IF strict_snapshot AND TG_OP <> 'DELETE' THEN
    EXECUTE registry.clash_sql INTO clash;
    IF clash THEN
      RAISE EXCEPTION 'pgtide: % re-creates a row key whose previous version was changed by a transaction that committed after this transaction''s snapshot', TG_TABLE_NAME
        USING ERRCODE = 'serialization_failure', HINT = 'retry the transaction';
    END IF;
  END IF;

  IF TG_OP = 'INSERT' THEN
    INSERT INTO :SCHEMA.log (pos, txid, relid, op, new, written_at)
      SELECT position, xid, TG_RELID, 'i', row_to_json(n.*), written FROM new_rows n;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO :SCHEMA.log (pos, txid, relid, op, old, written_at)
      SELECT position, xid, TG_RELID, 'd', row_to_json(o.*), written FROM old_rows o;
  ELSE
    EXECUTE registry.update_sql USING position, xid, written;
  END IF;
  GET DIAGNOSTICS captured = ROW_COUNT;
  -- NOTIFY is only a wake-up, and it serialises committers on a cluster-wide lock. So
  -- at most one open transaction per table sends it: whoever holds this transaction-
  -- scoped lock. Readers re-read while transactions are in flight, which covers the
  -- writers that skipped.
  IF captured > 0 AND pg_try_advisory_xact_lock(hashtext(:CHANNEL), TG_RELID::int) THEN
    PERFORM pg_notify(:CHANNEL, TG_RELID::text);
  END IF;
  RETURN NULL;
END
$$;

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
    $f$INSERT INTO %1$s.log (pos, txid, relid, op, changed, new, old, written_at)
SELECT $1, $2, %2$s::oid,
  CASE WHEN o.%3$s IS NULL THEN 'i' WHEN n.%3$s IS NULL THEN 'd' ELSE 'u' END::"char",
  CASE WHEN o.%3$s IS NOT NULL AND n.%3$s IS NOT NULL THEN array_remove(ARRAY[%4$s]::text[], NULL) END,
  CASE WHEN n.%3$s IS NOT NULL THEN row_to_json(n.*) END,
  CASE WHEN o.%3$s IS NOT NULL THEN row_to_json(o.*) END,
  $3
FROM old_rows o FULL JOIN new_rows n ON %5$s
WHERE o.%3$s IS NULL OR n.%3$s IS NULL OR %6$s$f$,
    :SCHEMA_LITERAL_IDENT, rel::oid, first_key, changed_list, join_on, watched_test);
END
$$;

CREATE FUNCTION :SCHEMA.clash_sql(rel regclass, key_columns text[])
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  -- A correlated count, not a join: the planner knows the key is unique and a join would
  -- stop at the first visible version.
  SELECT format('SELECT EXISTS (SELECT FROM new_rows n WHERE (SELECT count(*) FROM %s t WHERE %s) > 1)',
                rel, string_agg(format('t.%1$I = n.%1$I', k), ' AND '))
    FROM unnest(key_columns) k
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

  INSERT INTO :SCHEMA.watched AS w (relid, schema_name, table_name, key_columns, columns, update_sql, clash_sql)
  SELECT rel, n.nspname, c.relname, keys, merged, :SCHEMA.update_capture_sql(rel, keys, merged),
         :SCHEMA.clash_sql(rel, keys)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = rel
  ON CONFLICT (relid) DO UPDATE
    SET schema_name = excluded.schema_name, table_name = excluded.table_name,
        key_columns = excluded.key_columns, columns = excluded.columns,
        update_sql = excluded.update_sql, clash_sql = excluded.clash_sql;

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

REVOKE ALL ON ALL TABLES IN SCHEMA :SCHEMA FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :SCHEMA FROM PUBLIC;
