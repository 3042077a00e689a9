import { isDeepStrictEqual } from 'node:util';
import type { Change, Operation, RowData } from '../types.js';

/**
 * Options of the change builders {@link insert}, {@link update}, {@link del} and
 * {@link truncate} (which takes only `id`, `txid` and `committedAt`); every field has a
 * default.
 *
 * @example
 * ```ts
 * const change = insert('members', { org: 'x', user: 7 }, { id: 100, key: ['org', 'user'] });
 * console.log(change.id, change.txid, change.key);
 * // Logs:
 * // 100 100 { org: 'x', user: 7 }
 * ```
 */
export interface ChangeOptions {
  /** The change's log id. Default: the next value of a counter shared by all builders (1, 2, 3, ...). */
  readonly id?: string | number | bigint;
  /** The writing transaction's id. Default: the change's id. */
  readonly txid?: string | number | bigint;
  /** The primary-key column names; `key` takes their values from the row. Default `['id']`. */
  readonly key?: readonly string[];
  /**
   * The changed columns. Default: every column of the row for insert and delete; for
   * update, the columns whose values differ between `row` and `old` (deep equality).
   */
  readonly changed?: readonly string[];
  /** Default {@link TEST_COMMITTED_AT}. */
  readonly committedAt?: Date;
}

/**
 * The `committedAt` of every built change that does not give its own:
 * 2024-01-01T00:00:00.000Z (each change gets its own `Date` with this time).
 *
 * @example
 * ```ts
 * expect(insert('users', { id: 1 }).committedAt).toEqual(TEST_COMMITTED_AT);
 * ```
 */
export const TEST_COMMITTED_AT: Date = new Date('2024-01-01T00:00:00.000Z');

let nextId = 1n;

/**
 * Restarts the id counter of the change builders, for tests that assert on ids.
 *
 * @example
 * ```ts
 * beforeEach(() => resetChangeIds());
 * it('numbers changes from 1', () => {
 *   console.log(insert('users', { id: 7 }).id);
 * });
 * // Logs:
 * // 1
 * ```
 * @param next - the id the next built change gets. Default 1.
 */
export function resetChangeIds(next: number | bigint = 1): void {
  nextId = BigInt(next);
}

/**
 * Builds the {@link Change} an `INSERT` of `row` into `table` produces.
 *
 * @example
 * ```ts
 * import { insert } from 'pgtide/testing';
 *
 * const change = insert('mail_users', { id: 1, quota_bytes: 100 });
 * console.log(change.schema, change.table, change.op, change.key, change.changed);
 * // Logs:
 * // public mail_users insert { id: 1 } [ 'id', 'quota_bytes' ]
 * ```
 * @param table - `'name'` (schema `public`) or `'schema.name'`.
 * @param row - the inserted row, becomes `new`.
 * @param options - `id`, `txid`, `key` columns, `changed`, `committedAt`.
 * @returns a complete change; `changed` lists every column of `row`.
 */
export function insert<Row extends object = RowData>(table: string, row: Row, options: ChangeOptions = {}): Change<Row> {
  return build(table, 'insert', row, row, undefined, options, Object.keys(row));
}

/**
 * Builds the {@link Change} an `UPDATE` of one row of `table` from `old` to `row` produces.
 *
 * @example
 * ```ts
 * import { update } from 'pgtide/testing';
 *
 * const change = update('mail_users', { id: 1, quota_bytes: 200 }, { id: 1, quota_bytes: 100 });
 * console.log(change.op, change.key, change.changed, change.old?.quota_bytes, change.new?.quota_bytes);
 * // Logs:
 * // update { id: 1 } [ 'quota_bytes' ] 100 200
 * ```
 * @param table - `'name'` (schema `public`) or `'schema.name'`.
 * @param row - the row after the update, becomes `new`; `key` takes its values from it.
 * @param old - the row before the update, becomes `old`.
 * @param options - `id`, `txid`, `key` columns, `changed`, `committedAt`.
 * @returns a complete change; `changed` defaults to the columns whose values differ.
 */
export function update<Row extends object = RowData>(
  table: string,
  row: Row,
  old: NoInfer<Row>,
  options: ChangeOptions = {},
): Change<Row> {
  const after = columnsOf(row);
  const before = columnsOf(old);
  const differing = Object.keys({ ...after, ...before }).filter(
    (column) => !Object.hasOwn(after, column) || !Object.hasOwn(before, column) || !isDeepStrictEqual(after[column], before[column]),
  );
  return build(table, 'update', row, row, old, options, differing);
}

/**
 * Builds the {@link Change} a `DELETE` of `row` from `table` produces. (`delete` is a
 * reserved word, hence `del`.)
 *
 * @example
 * ```ts
 * import { del } from 'pgtide/testing';
 *
 * const change = del('billing.invoices', { tenant: 'a', no: 7, total: 10 }, { key: ['tenant', 'no'] });
 * console.log(change.schema, change.table, change.op, change.key, change.new);
 * // Logs:
 * // billing invoices delete { tenant: 'a', no: 7 } undefined
 * ```
 * @param table - `'name'` (schema `public`) or `'schema.name'`.
 * @param row - the deleted row, becomes `old`; `key` takes its values from it.
 * @param options - `id`, `txid`, `key` columns, `changed`, `committedAt`.
 * @returns a complete change; `changed` lists every column of `row`.
 */
export function del<Row extends object = RowData>(table: string, row: Row, options: ChangeOptions = {}): Change<Row> {
  return build(table, 'delete', row, undefined, row, options, Object.keys(row));
}

/**
 * Builds the {@link Change} a `TRUNCATE` of `table` produces: it has no row, so `key` is
 * `{}`, `changed` is `[]`, and there is no `new` and no `old`. Every row of the table
 * before it is gone; real streams deliver it to every stream of the table, `rowId` and
 * `field` streams included, and so does `createTestTide()`.
 *
 * @example
 * ```ts
 * import { truncate } from 'pgtide/testing';
 *
 * const change = truncate('billing.invoices', { id: 9 });
 * console.log(change.id, change.schema, change.table, change.op, change.key, change.changed);
 * // Logs:
 * // 9 billing invoices truncate {} []
 * ```
 * @param table - `'name'` (schema `public`) or `'schema.name'`.
 * @param options - `id`, `txid`, `committedAt`.
 * @returns a complete change with an empty key and no rows.
 */
export function truncate<Row extends object = RowData>(
  table: string,
  options: Pick<ChangeOptions, 'id' | 'txid' | 'committedAt'> = {},
): Change<Row> {
  return build<Row>(table, 'truncate', {}, undefined, undefined, { ...pick(options), key: [], changed: [] }, []);
}

/** @internal Splits `'schema.name'` (or `'name'`, schema `public`) at its first dot. */
export function splitTable(table: string): { readonly schema: string; readonly name: string } {
  const dot = table.indexOf('.');
  return dot === -1 ? { schema: 'public', name: table } : { schema: table.slice(0, dot), name: table.slice(dot + 1) };
}

/** The options `truncate` honours (a plain `ChangeOptions` object may carry others). */
function pick(options: ChangeOptions): ChangeOptions {
  const { id, txid, committedAt } = options;
  return {
    ...(id === undefined ? {} : { id }),
    ...(txid === undefined ? {} : { txid }),
    ...(committedAt === undefined ? {} : { committedAt }),
  };
}

function columnsOf(row: object): Readonly<Record<string, unknown>> {
  return Object.fromEntries(Object.entries(row));
}

function build<Row extends object>(
  table: string,
  op: Operation,
  keySource: object,
  after: Row | undefined,
  before: Row | undefined,
  options: ChangeOptions,
  changed: readonly string[],
): Change<Row> {
  const { schema, name } = splitTable(table);
  const id = String(options.id ?? nextId++);
  const values = columnsOf(keySource);
  const key: Record<string, unknown> = {};
  for (const column of options.key ?? ['id']) key[column] = values[column];
  return {
    id,
    txid: String(options.txid ?? id),
    schema,
    table: name,
    op,
    key,
    ...(after === undefined ? {} : { new: after }),
    ...(before === undefined ? {} : { old: before }),
    changed: options.changed ?? changed,
    committedAt: options.committedAt ?? new Date(TEST_COMMITTED_AT.getTime()),
  };
}
