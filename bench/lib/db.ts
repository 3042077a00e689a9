// Database helpers shared by the scenarios and the child jobs.
import pg from 'pg';
import { connect, type Tide } from '../../src/index.js';

/** The benchmark row: about 220 bytes as jsonb in the log, like the issue's reference figures. */
export function createTableSql(table: string): string {
  return `CREATE TABLE ${table} (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    email text NOT NULL,
    quota bigint NOT NULL,
    active boolean NOT NULL,
    created_at timestamptz NOT NULL,
    note text
  )`;
}

export const tableColumns = ['id', 'owner', 'email', 'quota', 'active', 'created_at', 'note'] as const;

/**
 * The floor of any trigger-based capture, for comparison in the same run: statement-level
 * AFTER triggers with transition tables writing one jsonb per row into a log with nothing
 * but a primary key; updates keep rows where a column changed (per-column comparisons),
 * with the list of changed columns and the new row. No positions, no old values, no
 * NOTIFY, no second index: what pgtide adds on top is its own cost. `name` names the
 * update function (an identifier).
 */
export function bareCaptureSql(table: string, name = table): string {
  const changed = `array_remove(ARRAY[${tableColumns.map((c) => `CASE WHEN n.${c} IS DISTINCT FROM o.${c} THEN '${c}' END`).join(', ')}]::text[], NULL)`;
  const anyChanged = tableColumns.map((c) => `n.${c} IS DISTINCT FROM o.${c}`).join(' OR ');
  return `CREATE TABLE IF NOT EXISTS bare_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, changed text[], new jsonb NOT NULL);
    CREATE OR REPLACE FUNCTION bare_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO bare_log (new) SELECT to_jsonb(n) FROM new_rows n;
      RETURN NULL;
    END $$;
    CREATE OR REPLACE FUNCTION bare_update_${name}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO bare_log (changed, new)
        SELECT ${changed}, to_jsonb(n) FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE ${anyChanged};
      RETURN NULL;
    END $$;
    CREATE TRIGGER bare_insert AFTER INSERT ON ${table} REFERENCING NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION bare_insert();
    CREATE TRIGGER bare_update AFTER UPDATE ON ${table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION bare_update_${name}();`;
}

/** INSERT of the rows with ids $1..$2, one statement. */
export function insertRangeSql(table: string): string {
  return `INSERT INTO ${table} (id, owner, email, quota, active, created_at, note)
    SELECT g, 'user' || g, 'user' || g || '@example.com', g * 1000, true, now(), repeat('x', 40)
      FROM generate_series($1::bigint, $2::bigint) g`;
}

/** INSERT of one row with id $1. */
export function insertOneSql(table: string): string {
  return `INSERT INTO ${table} (id, owner, email, quota, active, created_at, note)
    VALUES ($1::bigint, 'user' || $1::bigint, 'user' || $1::bigint || '@example.com', $1::bigint * 1000, true, now(), repeat('x', 40))`;
}

export function urlWithDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

/** Creates a fresh database (dropping an old one of that name) and returns its URL. */
export async function freshDatabase(serverUrl: string, name: string): Promise<string> {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return urlWithDatabase(serverUrl, name);
}

export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

export const silentLogger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message: string, meta?: Record<string, unknown>) => console.warn('[pgtide]', message, meta ?? ''),
  error: (message: string, meta?: Record<string, unknown>) => console.error('[pgtide]', message, meta ?? ''),
};

/** A Tide with the library's defaults, except that background prunes are off during measurements. */
export function connectTide(url: string, options: { pageSize?: number } = {}): Promise<Tide> {
  return connect({ connectionString: url, logger: silentLogger, pruneInterval: 0, ...options });
}

export async function connectedClient(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: 'pgtide-bench' });
  // A connection the server drops (shutdown after a failure) must not crash the run.
  client.on('error', (error) => console.warn('[bench] connection error:', error.message));
  await client.connect();
  return client;
}

/**
 * A fresh database `name` whose `table` holds rows 1..`rows`, analysed and watched by
 * pgtide: the starting point of the read-side rows (fan-out, live UI). Returns its URL.
 */
export async function watchedTableDatabase(serverUrl: string, name: string, table: string, rows: number): Promise<string> {
  const url = await freshDatabase(serverUrl, name);
  const admin = await connectedClient(url);
  await admin.query(createTableSql(table));
  await admin.query(insertRangeSql(table), [1, rows]);
  await admin.query(`VACUUM ANALYZE ${table}`);
  await admin.end();
  const tide = await connectTide(url);
  await tide.watch(table);
  await tide.close();
  return url;
}

/**
 * Two watched tables on `tide`, `history_rows` with `history` changes in the log and an
 * empty `live_rows`, the log analysed: a log in use, where a live read has to find its
 * table's few new rows among another table's history (the latency experiments).
 */
export async function liveTableBesideHistory(tide: Tide, history: number): Promise<void> {
  await tide.pool.query(`${createTableSql('history_rows')}; ${createTableSql('live_rows')}`);
  await tide.watch('history_rows');
  await tide.watch('live_rows');
  for (let from = 1; from <= history; from += 100_000) {
    await tide.pool.query(insertRangeSql('history_rows'), [from, Math.min(history, from + 99_999)]);
  }
  await tide.pool.query('VACUUM ANALYZE pgtide.log');
}
