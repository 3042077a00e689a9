import type { TableInfo } from './catalog.js';
import type { LogRow } from './log.js';
import type { ZodType } from 'zod';
import type { Change, Operation, RowData, SchemaChange } from './types.js';

const operations: Record<Exclude<LogRow['op'], 's'>, Operation> = { i: 'insert', u: 'update', d: 'delete', t: 'truncate' };

/** Builds the public change from a log row (not a schema change: see `toSchemaChange`). */
export function toChange(row: LogRow, table: TableInfo): Change {
  const op = operations[row.op as Exclude<LogRow['op'], 's'>];
  const after = row.new ?? undefined;
  const before = row.old ?? undefined;
  const keySource = after ?? before;
  const key: Record<string, unknown> = {};
  if (keySource) for (const column of table.keyColumns) key[column] = keySource[column];
  return {
    id: row.id,
    txid: row.txid,
    schema: table.schema,
    table: table.name,
    op,
    key,
    new: after,
    old: before,
    changed: row.changed ?? row.columns.slice(),
    committedAt: new Date(row.written_ms),
  };
}

/** Builds the schema-change event of an 's' log row, given its shape's columns. */
export function toSchemaChange(table: TableInfo, columns: readonly string[]): SchemaChange {
  return { kind: 'schema', schema: table.schema, table: table.name, columns };
}

/** A log row as streams take it: a change, or a schema change of the table. */
export type LogItem = Change | SchemaChange;

/** Builds what a log row stands for. */
export function toItem(row: LogRow, table: TableInfo): LogItem {
  return row.op === 's' ? toSchemaChange(table, row.columns) : toChange(row, table);
}

/** Whether an item is a schema change (not a change). */
export function isSchemaChange(item: LogItem): item is SchemaChange {
  return (item as SchemaChange).kind === 'schema';
}

/**
 * A string identifying a row by its key values, equal for equal keys whatever their JS
 * type (`42` and `'42'` name the same integer key).
 */
export function rowKeyString(keyColumns: readonly string[], values: Readonly<Record<string, unknown>>): string {
  if (keyColumns.length === 1) return keyPart(values[keyColumns[0]!]);
  return keyColumns.map((column) => keyPart(values[column])).join('\u0000');
}

function keyPart(value: unknown): string {
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value);
}

/** Keeps only the key columns and `columns` of a row. */
export function projectRow(row: RowData | undefined, keep: ReadonlySet<string>): RowData | undefined {
  if (!row) return row;
  const projected: RowData = {};
  for (const column of Object.keys(row)) if (keep.has(column)) projected[column] = row[column];
  return projected;
}

/**
 * The `columns`/`field` part of a stream's selection: drops an update that changed none
 * of `watched`, and keeps the key columns plus `watched` in `new` and `old` (`keep`).
 */
export function selectColumns<C extends Change<unknown>>(change: C, watched: readonly string[], keep: ReadonlySet<string>): C | undefined {
  if (change.op === 'update' && !change.changed.some((column) => watched.includes(column))) return undefined;
  return {
    ...change,
    new: projectRow(change.new as RowData | undefined, keep),
    old: projectRow(change.old as RowData | undefined, keep),
  };
}

/** The change with `new`/`old` parsed by a row schema (as given), or as it is without one. */
export function withRowSchema<Row>(change: Change, schema: ZodType<Row> | undefined): Change<Row> {
  if (!schema) return change as Change<Row>;
  return {
    ...change,
    new: change.new === undefined ? undefined : schema.parse(change.new),
    old: change.old === undefined ? undefined : schema.parse(change.old),
  };
}
