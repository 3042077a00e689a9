import type { Pool } from 'pg';
import type { Blocker } from './types.js';

const holdsBack = 'its own changes (delivered at commit, dropped on rollback) and pruning; no other transaction\u2019s changes';

/** Open writing transactions of the server, and prepared transactions, oldest first. */
export async function listBlockers(pool: Pool): Promise<Blocker[]> {
  const { rows } = await pool.query<{
    kind: 'open' | 'prepared';
    pid: number | null;
    txid: string;
    gid: string | null;
    database: string | null;
    age: number;
    state: string | null;
    query: string | null;
    application_name: string | null;
  }>(
    `SELECT 'open' AS kind, pid, backend_xid::text AS txid, NULL AS gid, datname::text AS database,
            extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age, state, query, application_name
       FROM pg_stat_activity
      WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
     UNION ALL
     SELECT 'prepared', NULL, transaction::text, gid, database::text,
            extract(epoch FROM clock_timestamp() - prepared)::float8, NULL, NULL, NULL
       FROM pg_prepared_xacts
      ORDER BY age DESC`,
  );
  return rows.map((row) => ({
    kind: row.kind,
    pid: row.pid,
    txid: row.txid,
    gid: row.gid,
    database: row.database,
    ageSeconds: row.age,
    state: row.state,
    query: row.query,
    applicationName: row.application_name,
    holdsBack,
  }));
}
