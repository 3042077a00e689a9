import type { Pool } from 'pg';
import { PgTideError } from './errors.js';
import { sqlState } from './sql.js';

/** What pgtide needs to know about a watched table, read from the catalog. */
export interface TableInfo {
  readonly relid: number;
  readonly schema: string;
  readonly name: string;
  /** `schema.name`, both quoted, for messages and SQL. */
  readonly qualified: string;
  readonly columns: readonly string[];
  readonly keyColumns: readonly string[];
  /** The key columns' SQL types (`format_type`, typmod included), to read a `rowId` on the server's terms. */
  readonly keyTypes: readonly string[];
}

/**
 * Splits a table reference into optional schema and name. Plain strings are taken
 * literally (`'Mail Users'`, `'app.mail_users'`); a string with double quotes is parsed
 * as an SQL identifier by the server (`'"my.schema"."t"'`).
 */
async function parseTableName(pool: Pool, table: string): Promise<[string | null, string]> {
  const invalid = (cause?: unknown) =>
    new PgTideError(
      'INVALID_TABLE_NAME',
      `invalid table name ${JSON.stringify(table)}: use 'name', 'schema.name' or quoted SQL identifiers`,
      { table },
      { cause },
    );
  let parts: string[];
  if (table.includes('"')) {
    try {
      parts = (await pool.query<{ parts: string[] }>('SELECT parse_ident($1, true) AS parts', [table])).rows[0]!.parts;
    } catch (error) {
      if (sqlState(error)?.startsWith('22')) throw invalid(error);
      throw error;
    }
  } else {
    parts = table.split('.');
  }
  if (parts.length < 1 || parts.length > 2 || parts.some((part) => part.length === 0 || part.includes('\0'))) {
    throw invalid();
  }
  return parts.length === 2 ? [parts[0]!, parts[1]!] : [null, parts[0]!];
}

/**
 * Resolves a table reference against the catalog. Raises `INVALID_TABLE_NAME`,
 * `UNKNOWN_TABLE`, `UNSUPPORTED_TABLE` (not an ordinary or partitioned table) or
 * `NO_PRIMARY_KEY`.
 */
export async function describeTable(pool: Pool, table: string): Promise<TableInfo> {
  const [schema, name] = await parseTableName(pool, table);
  const { rows } = await pool.query<{
    relid: string;
    schema: string;
    name: string;
    qualified: string;
    relkind: string;
    columns: string[];
    key_columns: string[] | null;
    key_types: string[] | null;
  }>(
    `SELECT c.oid::int8 AS relid, n.nspname AS schema, c.relname AS name, c.relkind,
            format('%I.%I', n.nspname, c.relname) AS qualified,
            ARRAY(SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns,
            (SELECT array_agg(a.attname::text ORDER BY k.ord)
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary) AS key_columns,
            (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary) AS key_types
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relname = $2
        AND CASE WHEN $1::text IS NULL THEN pg_table_is_visible(c.oid) ELSE n.nspname = $1::text END`,
    [schema, name],
  );
  const row = rows[0];
  if (!row) {
    throw new PgTideError('UNKNOWN_TABLE', `table ${JSON.stringify(table)} does not exist (or is not on the search_path)`, {
      table,
    });
  }
  if (row.relkind !== 'r' && row.relkind !== 'p') {
    throw new PgTideError('UNSUPPORTED_TABLE', `${row.qualified} is not a table; only tables can be watched`, {
      table,
      relkind: row.relkind,
    });
  }
  if (!row.key_columns) {
    throw new PgTideError('NO_PRIMARY_KEY', `table ${row.qualified} has no primary key; pgtide identifies rows by it`, {
      table,
    });
  }
  return {
    relid: Number(row.relid),
    schema: row.schema,
    name: row.name,
    qualified: row.qualified,
    columns: row.columns,
    keyColumns: row.key_columns,
    keyTypes: row.key_types!,
  };
}

/** Key types whose values compare in JavaScript as the server compares them (given as numbers or strings). */
const plainKeyTypes = new Set(['integer', 'smallint', 'bigint', 'text', 'character varying']);

/**
 * A `rowId`'s key values as the pool returns them for the row (so `'12.5'` finds the
 * numeric key 12.50, a `Date` or ISO string a timestamptz key, any case a uuid key):
 * the server casts each to its key column's type. Integers and text need no round trip.
 */
export async function canonicalKey(pool: Pool, info: TableInfo, values: Record<string, unknown>): Promise<Record<string, unknown>> {
  const plain = info.keyColumns.every(
    (column, index) =>
      plainKeyTypes.has(info.keyTypes[index]!) &&
      (typeof values[column] === 'string' || (typeof values[column] === 'number' && Number.isSafeInteger(values[column]))),
  );
  if (plain) return values;
  const select = info.keyTypes.map((type, index) => `CAST($${index + 1} AS ${type}) AS c${index}`).join(', ');
  try {
    const { rows } = await pool.query<Record<string, unknown>>(`SELECT ${select}`, info.keyColumns.map((key) => values[key]));
    const canonical: Record<string, unknown> = {};
    info.keyColumns.forEach((column, index) => (canonical[column] = rows[0]![`c${index}`]));
    return canonical;
  } catch (error) {
    throw new PgTideError(
      'INVALID_OPTIONS',
      `rowId: not a key of ${info.qualified} (${info.keyTypes.join(', ')}): ${String(error)}`,
      { option: 'rowId', table: info.qualified },
      { cause: error },
    );
  }
}

/** Raises `UNKNOWN_COLUMN` for the first of `columns` the table does not have. */
export function assertColumns(info: TableInfo, columns: readonly string[], option: string): void {
  for (const column of columns) {
    if (!info.columns.includes(column)) {
      throw new PgTideError(
        'UNKNOWN_COLUMN',
        `${option}: table ${info.qualified} has no column ${JSON.stringify(column)} (columns: ${info.columns.join(', ')})`,
        { table: info.qualified, column, option },
      );
    }
  }
}
