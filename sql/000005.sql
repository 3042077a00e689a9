-- pgtide schema, version 5: dead letters and consumer groups.

-- Changes a consumer's handler gave up on (processChanges, after its last attempt). The
-- change itself stays in the log: prune keeps every change a dead letter refers to, so
-- it can be listed and delivered again (retry) as it was.
CREATE TABLE :SCHEMA.dead_letters (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- The consumer's name as the application uses it (a group's name for its members).
  consumer text NOT NULL,
  relid oid NOT NULL,
  change_id bigint NOT NULL,
  error text NOT NULL,
  attempts integer NOT NULL,
  failed_at timestamptz NOT NULL DEFAULT now(),
  -- Set by retryDeadLetters: the consumer's reader delivers it again.
  retry_requested_at timestamptz,
  -- The session that took it for delivery (pid and start, so a dead one's claim lapses).
  claimed_pid integer,
  claimed_backend_start timestamptz,
  UNIQUE (consumer, change_id)
);
CREATE INDEX dead_letters_change ON :SCHEMA.dead_letters (relid, change_id);

-- A consumer group: one name whose work is shared by every live member, split by row
-- into a fixed number of partitions. Partition k is a consumer of its own (named
-- '<group>/<k>', with group_name and part set), so it has a position, holds the log and
-- expires like any consumer; a member reads for the partitions it holds, and holds one
-- by a session advisory lock on the partition's consumer key (the same lock a consumer's
-- lease takes), on the member's own connection.
CREATE TABLE :SCHEMA.groups (
  name text PRIMARY KEY,
  relid oid NOT NULL,
  partitions integer NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
  created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE :SCHEMA.consumers ADD COLUMN group_name text REFERENCES :SCHEMA.groups (name) ON DELETE CASCADE,
                              ADD COLUMN part integer;

-- Members, each with the session (pid and start) that makes it live: a row whose
-- session is gone is a dead member, removed by whoever sees it.
CREATE TABLE :SCHEMA.group_members (
  group_name text NOT NULL REFERENCES :SCHEMA.groups (name) ON DELETE CASCADE,
  member text NOT NULL,
  pid integer NOT NULL,
  backend_start timestamptz NOT NULL,
  joined_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- The partitions it holds now (for status; the advisory locks are what count).
  holds integer[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (group_name, member)
);

-- Roles that may consume may use these too: those granted already, and those
-- grant_consumer grants from now on.
DO $$
DECLARE
  role_name text;
BEGIN
  FOR role_name IN SELECT DISTINCT p.grantee FROM information_schema.routine_privileges p
                    WHERE p.routine_schema = :CHANNEL AND p.routine_name = 'read_batch'
                      AND p.privilege_type = 'EXECUTE' AND p.grantee <> current_user LOOP
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s.dead_letters, %1$s.groups, %1$s.group_members TO %2$I',
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
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s.consumers, %1$s.dead_letters, %1$s.groups, %1$s.group_members TO %2$s',
                 :SCHEMA_LITERAL_IDENT, grantee);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean), '
    '%1$s.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[]), '
    '%1$s.tables_with_news(oid[], pg_snapshot[]), %1$s.delivered(integer, pg_snapshot, pg_snapshot, bigint, integer, xid8, bigint), '
    '%1$s.era_of(bigint), %1$s.current_era() TO %2$s', :SCHEMA_LITERAL_IDENT, grantee);
END
$$;

REVOKE ALL ON FUNCTION :SCHEMA.grant_consumer(regrole) FROM PUBLIC;
