import type { Change } from '../src/types.js';

/** What identifies a row: its table and its primary-key values. Every {@link Change} has these. */
export type RowIdentity = Pick<Change<unknown>, 'schema' | 'table' | 'key'>;

/**
 * Returns a string that names the row a change is about, equal for two changes exactly
 * when they are about the same row of the same table.
 *
 * Intuition: the row's "address" — `schema`, `table` and primary key — as one Map key.
 *
 * ```
 * { schema: 'public', table: 'users', key: { id: 42 } }   ──┐
 * { schema: 'public', table: 'users', key: { id: '42' } } ──┴─> '["public","users",[["id","42"]]]'
 * ```
 *
 * The string is the JSON of `[schema, table, entries]`, where `entries` are the key's
 * `[column, value]` pairs sorted by column name (so key column order does not matter).
 * Numbers and bigints are written as `String(value)` first, so `42`, `42n` and `'42'`
 * name the same row (PostgreSQL `bigint` and `numeric` keys may arrive as strings), while
 * `'042'` or `'4.2e1'` do not equal `42`. `Date` values become their ISO string and
 * `undefined` becomes `null`; other values (strings, booleans, `null`, objects) are
 * encoded as JSON as they are, so `true` and `'true'` stay distinct. It is a cousin of
 * `rowKeyString` in `src/change.ts`, which needs the key column list; this one works from
 * the change alone and also names the table.
 *
 * A truncate has an empty key, so its row key is `[schema, table, []]`
 * (`'["public","users",[]]'`): it names the whole table, and never equals a row's, since
 * a watched table has a primary key. Every row key of a table starts with the same
 * `["schema","table",` prefix (JSON strings are self-delimiting).
 *
 * @example
 * ```ts
 * import { rowKey } from 'pgtide/operators';
 *
 * const a = { schema: 'public', table: 'users', key: { id: 42 } };
 * const b = { schema: 'public', table: 'users', key: { id: '42' } };
 * console.log(rowKey(a) === rowKey(b), rowKey(a));
 * // Logs:
 * // true ["public","users",[["id","42"]]]
 * ```
 * @param change - anything with `schema`, `table` and `key`, usually a {@link Change}.
 * @returns the row's canonical identity string.
 * @throws TypeError if a key value is an object that contains a bigint (JSON cannot encode it).
 */
export function rowKey(change: RowIdentity): string {
  const entries = Object.keys(change.key)
    .sort()
    .map((column): [string, unknown] => [column, canonicalValue(change.key[column])]);
  return JSON.stringify([change.schema, change.table, entries]);
}

function canonicalValue(value: unknown): unknown {
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  if (value instanceof Date) return value.toISOString();
  if (value === undefined) return null;
  return value;
}
