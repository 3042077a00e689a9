-- pgtide schema, version 6: consumer group members read only their own rows.

-- A member used to read every row of the table and pick its partitions' rows itself, so
-- four members read the log four times. Now the server says which partition a row is in
-- and leaves the others' rows out. A row's partition comes from its key fields exactly
-- as logged (record text, the type's output under canonical settings): the same key is
-- the same text, whichever process reads it and however its pool parses values.

-- A regular expression whose capture groups are the key fields of a row logged as record
-- text with these columns, or NULL when a key column is not among them. A field is
-- either quoted (record_out doubles quotes and backslashes inside) or has no quote, comma
-- or parenthesis; the lookahead stops a quoted key field from matching a prefix of
-- itself.
CREATE FUNCTION :SCHEMA.key_pattern(columns text[], key_columns text[])
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH field(f) AS (VALUES (E'(?:"(?:[^"\\\\]|""|\\\\.)*"|[^,)"]*)')),
  positions AS (SELECT array_position(columns, k) AS pos FROM unnest(key_columns) k),
  spans AS (SELECT pos, coalesce(lag(pos) OVER (ORDER BY pos), 0) AS prev FROM positions)
  SELECT CASE WHEN bool_or(pos IS NULL) THEN NULL
              ELSE E'^\\(' || string_agg(repeat(f || ',', (pos - prev - 1)::integer) || '(' || f || ')(?=[,)])', ',' ORDER BY pos) END
    FROM spans CROSS JOIN field
$$;

-- As in version 4, and: with `hash_keys`, each row of a table (insert, update, delete)
-- comes with its key's hash (non-negative; NULL for truncates and schema changes, which
-- are every partition's); with `parts`, only rows whose hash modulo `part_count` is one
-- of `parts` are read. A page then ends where `page_size` of those rows were found (or
-- the batch ends), and its position stands for the rows skipped on the way too.
CREATE FUNCTION :SCHEMA.read_batch(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                   page_size integer, check_pending boolean, consumers text[],
                                   hash_keys boolean, part_count integer, parts integer[])
RETURNS TABLE (snapshot text, closed boolean, pending boolean, id bigint, txid xid8, op "char",
               changed text[], new text, old text, shape integer, written_ms float8, expired text[], key_hash integer)
LANGUAGE plpgsql
VOLATILE
SET enable_bitmapscan = off
SET enable_seqscan = off
SET enable_sort = off
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  writers_committing boolean := false;
  hashing boolean := hash_keys OR parts IS NOT NULL;
  shape_ids integer[];
  patterns text[];
BEGIN
  IF parts IS NOT NULL AND coalesce(part_count, 0) < 1 THEN
    RAISE EXCEPTION 'pgtide: read_batch: parts need a part_count of at least 1' USING ERRCODE = '22023';
  END IF;
  IF check_pending THEN
    IF pg_try_advisory_lock(hashtext(:CHANNEL || ':pending'), rel::integer) THEN
      PERFORM pg_advisory_unlock(hashtext(:CHANNEL || ':pending'), rel::integer);
    ELSE
      writers_committing := true;
    END IF;
  END IF;
  IF hashing THEN
    SELECT array_agg(s.id), array_agg(:SCHEMA.key_pattern(s.columns, w.key_columns::text[]))
      INTO shape_ids, patterns
      FROM :SCHEMA.shapes s JOIN :SCHEMA.watched w ON w.relid = s.relid
     WHERE s.relid = rel;
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
           (extract(epoch FROM l.written_at) * 1000)::float8, batch.expired, l.key_hash
      FROM batch CROSS JOIN start
      LEFT JOIN LATERAL (
        SELECT p.*, h.key_hash FROM :SCHEMA.log p
         CROSS JOIN LATERAL (
           -- A key that cannot be found in the row (its column renamed since) hashes as 0:
           -- still one partition.
           SELECT CASE WHEN hashing AND p.op IN ('i', 'u', 'd') THEN
                    coalesce(hashtext(array_to_string(regexp_match(coalesce(p.new, p.old),
                                                                   patterns[array_position(shape_ids, p.shape)]), ',')) & 2147483647, 0)
                  END AS key_hash
         ) h
         WHERE p.relid = rel AND p.id > start.after AND p.id >= batch.lo AND p.id < batch.hi
           AND NOT pg_visible_in_snapshot(p.txid, base) AND pg_visible_in_snapshot(p.txid, batch.s)
           AND (parts IS NULL OR h.key_hash IS NULL OR h.key_hash % part_count = ANY (parts))
         ORDER BY p.id
         LIMIT page_size
      ) l ON true;
END
$$;

-- The version 4 signature, for callers that do not hash keys.
CREATE OR REPLACE FUNCTION :SCHEMA.read_batch(rel oid, era integer, base pg_snapshot, upto pg_snapshot, after_id bigint,
                                              page_size integer, check_pending boolean, consumers text[])
RETURNS TABLE (snapshot text, closed boolean, pending boolean, id bigint, txid xid8, op "char",
               changed text[], new text, old text, shape integer, written_ms float8, expired text[])
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT r.snapshot, r.closed, r.pending, r.id, r.txid, r.op, r.changed, r.new, r.old, r.shape, r.written_ms, r.expired
    FROM :SCHEMA.read_batch(rel, era, base, upto, after_id, page_size, check_pending, consumers, false, NULL, NULL) r
$$;

REVOKE ALL ON FUNCTION :SCHEMA.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[], boolean, integer, integer[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION :SCHEMA.key_pattern(text[], text[]) FROM PUBLIC;

-- Roles that may consume may read this way too: those granted already, and those
-- grant_consumer grants from now on.
DO $$
DECLARE
  role_name text;
BEGIN
  FOR role_name IN SELECT DISTINCT p.grantee FROM information_schema.routine_privileges p
                    WHERE p.routine_schema = :CHANNEL AND p.routine_name = 'read_batch'
                      AND p.privilege_type = 'EXECUTE' AND p.grantee <> current_user LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[], boolean, integer, integer[]), '
                   '%1$s.key_pattern(text[], text[]) TO %2$I', :SCHEMA_LITERAL_IDENT, role_name);
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
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s.consumers, %1$s.dead_letters, %1$s.groups, %1$s.group_members TO %2$s',
                 :SCHEMA_LITERAL_IDENT, grantee);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean), '
    '%1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[]), '
    '%1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[], boolean, integer, integer[]), '
    '%1$s.key_pattern(text[], text[]), %1$s.tables_with_news(oid[], pg_snapshot[]), %1$s.delivered(integer, pg_snapshot, pg_snapshot, bigint, integer, xid8, bigint), '
    '%1$s.era_of(bigint), %1$s.current_era() TO %2$s', :SCHEMA_LITERAL_IDENT, grantee);
END
$$;

REVOKE ALL ON FUNCTION :SCHEMA.grant_consumer(regrole) FROM PUBLIC;
