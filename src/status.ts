import type { Pool } from 'pg';
import type { SchemaNames } from './sql.js';

/** A watched table, as `tide.watched()` and `tide.watch()` report it. */
export interface WatchedTable {
  /** `schema.name`, quoted where needed. */
  readonly table: string;
  /** The primary-key columns that identify its rows. */
  readonly keyColumns: readonly string[];
  /** Columns whose updates are captured; null means every column. */
  readonly columns: readonly string[] | null;
  /** Changes of this table in the log now. */
  readonly changes: number;
  /** When it was first watched. */
  readonly watchedAt: Date;
}

/** The log as a whole, as `tide.logStats()` reports it. */
export interface LogStats {
  /** The installed schema version. */
  readonly schemaVersion: number;
  /** Rows in the log, all tables. */
  readonly changes: number;
  /** Size on disk of the log table with its indexes. */
  readonly bytes: number;
  /** When the oldest change in the log was written, or null for an empty log. */
  readonly oldestWrittenAt: Date | null;
}

export async function listWatched(pool: Pool, schema: SchemaNames, relid?: number): Promise<WatchedTable[]> {
  const { rows } = await pool.query<{
    table: string;
    key_columns: string[];
    columns: string[] | null;
    changes: number;
    watched_at: Date;
  }>(
    `SELECT format('%I.%I', w.schema_name, w.table_name) AS table, w.key_columns, w.columns, w.watched_at,
            (SELECT count(*) FROM ${schema.ident}.log l WHERE l.relid = w.relid)::float8 AS changes
       FROM ${schema.ident}.watched w
      WHERE $1::oid IS NULL OR w.relid = $1::oid
      ORDER BY 1`,
    [relid ?? null],
  );
  return rows.map((row) => ({
    table: row.table,
    keyColumns: row.key_columns,
    columns: row.columns,
    changes: row.changes,
    watchedAt: row.watched_at,
  }));
}

export async function readLogStats(pool: Pool, schema: SchemaNames): Promise<LogStats> {
  const { rows } = await pool.query<{ version: number; changes: number; bytes: number; oldest: Date | null }>(
    `SELECT (SELECT max(version) FROM ${schema.ident}.migrations) AS version,
            (SELECT count(*) FROM ${schema.ident}.log)::float8 AS changes,
            pg_total_relation_size(format('%I.log', $1::text)::regclass)::float8 AS bytes,
            (SELECT min(written_at) FROM ${schema.ident}.log) AS oldest`,
    [schema.name],
  );
  const row = rows[0]!;
  return { schemaVersion: row.version, changes: row.changes, bytes: row.bytes, oldestWrittenAt: row.oldest };
}
