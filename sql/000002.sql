-- pgtide schema, version 2: access control.

-- A role reads the changes of a table only if it may read the table itself. Row-level
-- security on the log enforces it for every reader (read_batch runs as its caller); the
-- owner that installs pgtide, and the capture function running as that owner, are not
-- subject to it.
ALTER TABLE :SCHEMA.log ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable_tables ON :SCHEMA.log
  USING (has_table_privilege(relid, 'SELECT'));

-- What an application role needs to consume, acknowledge and prune (not to install or
-- watch: that stays with the owner of the watched tables). The role must also be able
-- to SELECT the tables it follows. Run by the installing role: SELECT pgtide.grant_consumer('app');
CREATE FUNCTION :SCHEMA.grant_consumer(grantee regrole)
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
    '%1$s.tables_with_news(oid[], pg_snapshot[]), %1$s.delivered(integer, pg_snapshot, pg_snapshot, bigint, integer, xid8, bigint), '
    '%1$s.era_of(bigint), %1$s.current_era() TO %2$s', :SCHEMA_LITERAL_IDENT, grantee);
END
$$;

REVOKE ALL ON FUNCTION :SCHEMA.grant_consumer(regrole) FROM PUBLIC;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :SCHEMA FROM PUBLIC;
