import type { Pool } from 'pg';
import { assertColumns, describeTable, type TableInfo } from './catalog.js';
import { PgTideError } from './errors.js';
import { classifyDatabaseError, sqlState, type SchemaNames } from './sql.js';

/**
 * Installs (or widens) capture for a table: validates the table and columns first, so
 * bad input installs nothing, then attaches the shared capture triggers in one
 * transaction (`watch()` in the SDK's schema).
 */
export async function watchTable(
  pool: Pool,
  schema: SchemaNames,
  table: string,
  columns: readonly string[] | undefined,
): Promise<TableInfo> {
  const info = await describeTable(pool, table);
  if (info.schema === schema.name) {
    // Capturing pgtide's own log would capture its own captures, without end.
    throw new PgTideError('UNSUPPORTED_TABLE', `${info.qualified} belongs to pgtide itself and cannot be watched`, {
      table,
    });
  }
  if (columns) assertColumns(info, columns, 'columns');
  try {
    await pool.query(`SELECT ${schema.ident}.watch($1::oid::regclass, $2::text[])`, [info.relid, columns ?? null]);
  } catch (error) {
    // The table lost its key between our check and the install.
    if (sqlState(error) === 'PT001') {
      throw new PgTideError('NO_PRIMARY_KEY', `table ${info.qualified} has no primary key`, { table }, { cause: error });
    }
    throw classifyDatabaseError(error, `watch ${info.qualified}`) ?? error;
  }
  return info;
}

/** Removes capture from a table; returns whether it was watched. */
export async function unwatchTable(pool: Pool, schema: SchemaNames, table: string): Promise<boolean> {
  const info = await describeTable(pool, table);
  const { rows } = await pool.query<{ removed: boolean }>(
    `SELECT ${schema.ident}.unwatch($1::oid::regclass) AS removed`,
    [info.relid],
  );
  return rows[0]!.removed;
}
