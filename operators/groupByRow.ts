import {
  defer,
  filter,
  from,
  groupBy,
  Observable,
  Subject,
  tap,
  type GroupedObservable,
  type ObservableInput,
  type OperatorFunction,
} from 'rxjs';
import type { Change } from '../src/types.js';
import { rowKey } from './rowKey.js';

/** Options of {@link groupByRow}. */
export interface GroupByRowOptions<Row> {
  /**
   * Closes a row's group when the returned input emits (or completes); a later change to
   * that row opens a new group. Without it, groups stay open until the source ends, or
   * (for a row's group) until its table is truncated.
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
 *
 * source:          --a1--b1--t---a2--|     (t = truncate of the table of a and b)
 * groupByRow():    --A---B---T---C---|
 *                    A: a1------|
 *                    B:     b1--|
 *                    T:         t-------|
 *                    C:             a2--|
 * ```
 *
 * Each group's `key` is the row's {@link rowKey} string; read `schema`, `table` and `key`
 * from any of its changes. Errors and completion reach every open group and the outer
 * stream, as with `groupBy`. Each open group costs memory; pass `duration` (for example
 * "until the row is deleted" or "after 1 minute") to close idle groups.
 *
 * A truncate (`TRUNCATE`: every row of its table is gone) ends every row of its table:
 * their open groups complete, just before it, as if their `duration` had emitted, and a
 * later change to such a row opens a new group. The truncate itself, being about no one
 * row, goes to a group of its own, the table's: its key is the {@link rowKey} of the
 * truncate (an empty key, which no row has), and it receives every truncate of the
 * table while it is open (a truncate does not close it; `duration` may). So a per-row
 * pipeline hears of the truncate by completing, and one subscriber to the table's group
 * handles it once: it is not copied into every group, so it is acknowledged once.
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
 * @returns an operator emitting a `GroupedObservable` per row, and one per truncated table.
 * @see withPrevious
 */
export function groupByRow<Row>(
  options: GroupByRowOptions<Row> = {},
): OperatorFunction<Change<Row>, GroupedObservable<string, Change<Row>>> {
  const key = (change: Change<Row>): string => rowKey(change);
  return (source) =>
    defer(() => {
      // Per subscription: each truncate, announced before groupBy routes it, so that the
      // row groups of its table complete first.
      const truncated = new Subject<Truncated>();
      const ends = (group: GroupedObservable<string, Change<Row>>): Observable<Truncated> =>
        truncated.pipe(filter((table) => group.key !== table.ownKey && group.key.startsWith(table.rowPrefix)));
      const { duration } = options;
      return source.pipe(
        tap((change) => {
          if (change.op === 'truncate') truncated.next(truncatedTable(change));
        }),
        groupBy(key, {
          duration: (group) => (duration === undefined ? ends(group) : either(duration(group), ends(group))),
        }),
      );
    });
}

/** A truncated table, as the keys of its groups show it. */
interface Truncated {
  /** The truncate's own {@link rowKey}: the key of the table's group. */
  readonly ownKey: string;
  /** How every {@link rowKey} of the table starts: `["schema","table",` (JSON is self-delimiting). */
  readonly rowPrefix: string;
}

function truncatedTable(change: Change<unknown>): Truncated {
  return { ownKey: rowKey(change), rowPrefix: `${JSON.stringify([change.schema, change.table]).slice(0, -1)},` };
}

/**
 * Emits when `input` or `closing` emits; completes and errors as `input` does (a duration
 * that completes closes its group, as in `groupBy`).
 */
function either(input: ObservableInput<unknown>, closing: Observable<unknown>): Observable<unknown> {
  return new Observable<unknown>((subscriber) => {
    const subscription = closing.subscribe((value) => subscriber.next(value));
    subscription.add(
      from(input).subscribe({
        next: (value) => subscriber.next(value),
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      }),
    );
    return subscription;
  });
}
