import { groupBy, type GroupedObservable, type ObservableInput, type OperatorFunction } from 'rxjs';
import type { Change } from '../src/types.js';
import { rowKey } from './rowKey.js';

/** Options of {@link groupByRow}. */
export interface GroupByRowOptions<Row> {
  /**
   * Closes a row's group when the returned input emits (or completes); a later change to
   * that row opens a new group. Without it, groups stay open until the source ends.
   */
  readonly duration?: (group: GroupedObservable<string, Change<Row>>) => ObservableInput<unknown>;
}

/**
 * Splits the stream into one inner Observable per row, keyed by {@link rowKey}.
 *
 * Intuition: RxJS `groupBy` where the key is "which row".
 *
 * ```
 * source:          --a1--b1--a2--|         (letter = row)
 * groupByRow():    --A---B-------|
 *                    A: a1------a2--|
 *                    B:     b1------|
 * ```
 *
 * Each group's `key` is the row's {@link rowKey} string; read `schema`, `table` and `key`
 * from any of its changes. Errors and completion reach every open group and the outer
 * stream, as with `groupBy`. Each open group costs memory; pass `duration` (for example
 * "until the row is deleted" or "after 1 minute") to close idle groups.
 *
 * @example
 * ```ts
 * import { filter, map, mergeMap, toArray } from 'rxjs';
 * import { groupByRow } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(
 *   groupByRow({ duration: (group) => group.pipe(filter((c) => c.op === 'delete')) }),
 *   mergeMap((group) => group.pipe(toArray(), map((changes) => changes.map((c) => c.op)))),
 * ).subscribe((ops) => console.log(ops));
 * // INSERT INTO users (id, name) VALUES (1, 'Ann');
 * // UPDATE users SET name = 'Bo' WHERE id = 1;
 * // DELETE FROM users WHERE id = 1;
 * // Logs:
 * // [ 'insert', 'update', 'delete' ]
 * ```
 * @param options - optional `duration` selector, as in RxJS `groupBy`.
 * @returns an operator emitting a `GroupedObservable` per row.
 * @see withPrevious
 */
export function groupByRow<Row>(
  options: GroupByRowOptions<Row> = {},
): OperatorFunction<Change<Row>, GroupedObservable<string, Change<Row>>> {
  const key = (change: Change<Row>): string => rowKey(change);
  return options.duration === undefined ? groupBy(key) : groupBy(key, { duration: options.duration });
}
