-- pgtide schema, version 8: an update logs the old values of the columns it changed.

-- An update's old row was logged whole, every column printed a second time though only
-- the changed ones differ from the new row (and a large unchanged value, TOASTed once in
-- the table, was copied into the log twice). Now the columns an update did not change
-- are NULL in its old record and the reader takes them from the new row: `changed` lists
-- every column whose value differs, so a column outside it equals the new row's, image
-- for image. The change event's `old` is the whole row as before. Rows logged before
-- this migration keep their whole old row, which the reader takes the same way. A delete
-- (and the delete half of a key change) still logs the whole row. The benchmark's UPDATE
-- of one column on 100k rows: 932 -> 820 WAL bytes per row (bench/README.md "Migration 8").

CREATE OR REPLACE FUNCTION :SCHEMA.capture_sql(rel regclass, parent regclass, op text, key_columns text[], watched_columns text[], shape integer)
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
  changed_olds text;
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
    -- ord: the column's place in the parent's rows (a partition's may differ).
    SELECT a.attname::text AS name,
           (SELECT p.attnum FROM pg_attribute p WHERE p.attrelid = parent AND p.attname = a.attname AND NOT p.attisdropped) AS ord,
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
    string_agg(differs, ' OR ' ORDER BY ord) FILTER (WHERE watched_columns IS NULL OR name = ANY (watched_columns)),
    'ROW(' || string_agg(format('CASE WHEN %s THEN o.%I END', differs, name), ', ' ORDER BY ord) || ')::text'
  INTO changed_list, watched_test, changed_olds
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
  CASE WHEN n.%3$s IS NULL THEN %8$s WHEN o.%3$s IS NOT NULL THEN %11$s END,
  %9$s, $2, %10$s
FROM old_rows o FULL JOIN new_rows n ON %5$s
WHERE o.%3$s IS NULL OR n.%3$s IS NULL OR %6$s$f$,
    :SCHEMA_LITERAL_IDENT, parent::oid, first_key, changed_list, join_on, watched_test, row_of_n, row_of_o, shape, wake, changed_olds);
END
$$;

-- Every watched table and partition gets its update statement anew.
UPDATE :SCHEMA.watched w
   SET update_sql = :SCHEMA.capture_sql(w.relid, w.relid, 'update', w.key_columns, w.columns, w.shape)
 WHERE w.shape IS NOT NULL;
UPDATE :SCHEMA.routes r
   SET update_sql = :SCHEMA.capture_sql(r.relid, r.parent, 'update', w.key_columns, w.columns, r.shape)
  FROM :SCHEMA.watched w
 WHERE w.relid = r.parent;
