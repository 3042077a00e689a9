import { filter, map, pipe, type OperatorFunction } from 'rxjs';
import { carryDelivery, markProcessed } from '../src/delivery.js';
import type { Change, Operation } from '../src/types.js';
import { rowKey } from './rowKey.js';

/**
 * Replaces the changes of each batch by their net effect per row, like a diff between
 * the table before and after the batch.
 *
 * Intuition: three updates to one row become one update; an insert then a delete
 * becomes nothing.
 *
 * ```
 * source:       --[i1 u1 u2 i3]--[i4 d4]--[u5 d5]--[u6 t i7 u7]--|   (letter = op, digit = row;
 * coalesce():   --[I1 u2 i3]--------------[D5]-----[t I7]--------|    t = truncate)
 *                 (I1 = i1 + u1, D5 = u5 + d5, I7 = i7 + u7; t drops u6)
 * ```
 *
 * Per row, changes fold left to right:
 * - insert + update = insert with the update's `new`; `changed` = union of both lists.
 * - insert + delete = nothing.
 * - update + update = update with the first `old` and the last `new`; `changed` = union.
 * - update + delete = delete whose `old` is the first `old` (the row before the batch).
 * - delete + insert = update with `old` from the delete and `new` from the insert;
 *   `changed` = the columns whose values differ (deep equality on JSON-like values).
 * - nothing (after insert + delete) + insert = that insert.
 *
 * Any other sequence (insert after insert or update, anything but insert after a delete
 * or after nothing) cannot come from one table's log in commit order; there the later
 * change simply replaces the accumulated one.
 *
 * A truncate (`TRUNCATE`: every row of its table is gone) drops every change of its
 * table that came before it in the batch, whatever rows they touched (a truncate before
 * it included): the table is empty after it either way. The truncate itself is kept, as
 * the same object, in its place. Changes of the table after it fold from scratch, as in
 * an empty table (an insert after a truncate stays an insert, never an update of a row
 * from before). Other tables' changes are not affected.
 *
 * Update + update takes the union of the `changed` lists (first-seen order) without
 * comparing values, so a column changed and changed back is still listed; compare `old`
 * and `new` if that matters. A delete followed by an identical insert yields an update
 * with `changed: []` (kept, so its id can be acknowledged). A row with one change in the
 * batch passes through as the same object.
 *
 * A merged change takes `id`, `txid`, `key` and `committedAt` from the row's LAST change
 * in the batch. Output is ordered by the position of each row's last change in the
 * batch, which keeps ids increasing when the input was. A batch whose every row nets to
 * nothing is not emitted at all (never an empty array).
 *
 * Acknowledgement for a durable consumer whose pipeline ends in `acknowledge()`: the net
 * change carries every change of its row ({@link carryDelivery}), so acknowledging it
 * marks them all processed; if the process stops before that, all of them are delivered
 * again (an insert is never lost behind its update). Likewise a truncate carries every
 * change it drops. Every change of a row that nets to nothing is marked processed at once
 * ({@link markProcessed}), unless a later truncate dropped it: then the truncate carries
 * it. Nothing is marked or carried when coalescing a batch throws.
 *
 * Rows are identified with {@link rowKey}, tables by `schema` and `table`. An error
 * thrown while coalescing (a key {@link rowKey} cannot encode) is sent downstream.
 *
 * @example
 * ```ts
 * import { batchChanges, coalesce } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(batchChanges({ time: 100 }), coalesce())
 *   .subscribe((batch) => console.log(batch.map((c) => [c.op, c.key, c.new?.name])));
 * // INSERT INTO users (id, name) VALUES (1, 'Ann'), (2, 'Bo');
 * // UPDATE users SET name = 'Cy' WHERE id = 1;
 * // DELETE FROM users WHERE id = 2;
 * // Logs (one batch):
 * // [ [ 'insert', { id: 1 }, 'Cy' ] ]
 * ```
 * @returns an operator from arrays of changes to non-empty arrays of net changes.
 * @see batchChanges
 * @see markProcessed
 */
export function coalesce<Row>(): OperatorFunction<readonly Change<Row>[], Change<Row>[]> {
  return pipe(
    map((batch: readonly Change<Row>[]) => coalesceBatch(batch)),
    filter((net) => net.length > 0),
  );
}

interface Entry<Row> {
  /** The row's net change so far; `undefined` for "nothing". */
  net: Change<Row> | undefined;
  /** Index in the batch of the row's last change. */
  last: number;
  /** Every change the net change stands for, in batch order. */
  changes: Change<Row>[];
  /** The row's table, as {@link tableOf} names it. */
  readonly table: string;
}

function coalesceBatch<Row>(batch: readonly Change<Row>[]): Change<Row>[] {
  const rows = new Map<string, Entry<Row>>();
  batch.forEach((change, index) => {
    const key = rowKey(change);
    const table = tableOf(change);
    if (change.op === 'truncate') {
      // The table is empty after it: every earlier change of the table is moot, and the
      // truncate stands for them (a truncate before it included).
      const dropped: Change<Row>[] = [];
      for (const [other, entry] of rows) {
        if (entry.table !== table) continue;
        dropped.push(...entry.changes);
        rows.delete(other);
      }
      rows.set(key, { net: change, last: index, changes: [...dropped, change], table });
      return;
    }
    const entry = rows.get(key);
    if (entry === undefined) {
      rows.set(key, { net: change, last: index, changes: [change], table });
    } else {
      entry.net = entry.net === undefined ? change : merge(entry.net, change);
      entry.last = index;
      entry.changes.push(change);
    }
  });
  // The whole batch folded without throwing: only now settle acknowledgement.
  const result: { net: Change<Row>; last: number }[] = [];
  for (const entry of rows.values()) {
    const net = entry.net;
    if (net === undefined) {
      // Nets to nothing: there is nothing left to do for any of them.
      for (const change of entry.changes) markProcessed(change);
      continue;
    }
    // The net change carries the effect of every change of the row: they are done when it is.
    for (const change of entry.changes) carryDelivery(change, net);
    result.push({ net, last: entry.last });
  }
  return result.sort((a, b) => a.last - b.last).map((entry) => entry.net);
}

/** Names a change's table; two changes of one table get the same string. */
function tableOf(change: Change<unknown>): string {
  return JSON.stringify([change.schema, change.table]);
}

/** The net effect of `earlier` then `later` on one row; `undefined` for "nothing". */
function merge<Row>(earlier: Change<Row>, later: Change<Row>): Change<Row> | undefined {
  switch (`${earlier.op}>${later.op}`) {
    case 'insert>update':
      return derive(later, 'insert', later.new, undefined, union(earlier.changed, later.changed));
    case 'insert>delete':
      return undefined;
    case 'update>update':
      return derive(later, 'update', later.new, earlier.old, union(earlier.changed, later.changed));
    case 'update>delete':
      return derive(later, 'delete', undefined, earlier.old, later.changed);
    case 'delete>insert':
      return derive(later, 'update', later.new, earlier.old, differing(earlier.old, later.new, later.changed));
    default:
      // Not a possible sequence for one row in commit order: the later change wins.
      return later;
  }
}

function derive<Row>(
  last: Change<Row>,
  op: Operation,
  after: Row | undefined,
  before: Row | undefined,
  changed: readonly string[],
): Change<Row> {
  return {
    id: last.id,
    txid: last.txid,
    schema: last.schema,
    table: last.table,
    op,
    key: last.key,
    ...(after === undefined ? {} : { new: after }),
    ...(before === undefined ? {} : { old: before }),
    changed,
    committedAt: last.committedAt,
  };
}

function union(a: readonly string[], b: readonly string[]): string[] {
  return [...new Set([...a, ...b])];
}

/** Columns whose values differ between two rows; `fallback` if either is not an object. */
function differing(before: unknown, after: unknown, fallback: readonly string[]): readonly string[] {
  if (!isRecord(before) || !isRecord(after)) return fallback;
  return union(Object.keys(after), Object.keys(before)).filter(
    (column) => !Object.hasOwn(before, column) || !Object.hasOwn(after, column) || !deepEqual(before[column], after[column]),
  );
}

function isRecord(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Structural equality for JSON-like values (plus `Date`). */
function deepEqual(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (a instanceof Date || b instanceof Date) {
    return a instanceof Date && b instanceof Date && a.getTime() === b.getTime();
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((item, i) => deepEqual(item, b[i]));
  }
  if (isRecord(a) && isRecord(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
  }
  return false;
}
