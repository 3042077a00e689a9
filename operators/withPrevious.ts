import { defer, map, type OperatorFunction } from 'rxjs';
import type { Change } from '../src/types.js';
import { rowKey } from './rowKey.js';

/** What {@link withPrevious} emits: a change and the change before it to the same row. */
export interface ChangeWithPrevious<Row> {
  /** The change just received. */
  readonly change: Change<Row>;
  /**
   * The last change to the same row seen by this subscription; `undefined` for the first,
   * for the first after a truncate of its table, and for a truncate itself.
   */
  readonly previous: Change<Row> | undefined;
}

/**
 * Pairs each change with the previous change to the same row, as seen by this
 * subscription.
 *
 * Intuition: `pairwise()` per row key ({@link rowKey}), starting with `undefined`.
 *
 * ```
 * source:          --a1--b1--a2--a3--|          (letter = row, digit = its nth change)
 * withPrevious():  --w---x---y---z---|
 *                    w = { change: a1, previous: undefined }, x = { change: b1, previous: undefined }
 *                    y = { change: a2, previous: a1 },        z = { change: a3, previous: a2 }
 * ```
 *
 * A delete is a change like any other: an insert that recreates the row gets the delete
 * as `previous`. A truncate (`TRUNCATE`: every row of its table is gone) is about no one
 * row: it is emitted with `previous: undefined`, and it makes the subscription forget
 * every row of its table, so the next change to any of them has no `previous` either.
 * Each subscription keeps its own memory, one entry per distinct row it has seen since
 * its table was last truncated, for as long as it lasts; prefer `groupByRow` with a
 * `duration` for streams over an unbounded set of rows.
 *
 * ```
 * source:          --a1--t--a2--|                (t = truncate of a's table)
 * withPrevious():  --w---x--y---|
 *                    w = { change: a1, previous: undefined }, x = { change: t, previous: undefined }
 *                    y = { change: a2, previous: undefined }
 * ```
 *
 * @example
 * ```ts
 * import { withPrevious } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(withPrevious())
 *   .subscribe(({ change, previous }) => console.log(change.op, previous?.op));
 * // INSERT INTO users (id, name) VALUES (1, 'Ann');
 * // UPDATE users SET name = 'Bo' WHERE id = 1;
 * // Logs:
 * // insert undefined
 * // update insert
 * ```
 * @returns an operator emitting `{ change, previous }` for each change.
 * @see groupByRow
 */
export function withPrevious<Row>(): OperatorFunction<Change<Row>, ChangeWithPrevious<Row>> {
  return (source) =>
    defer(() => {
      // Created per subscription, so two subscribers never share history. Rows are kept
      // per table, so that a truncate forgets its table's rows at once.
      const tables = new Map<string, Map<string, Change<Row>>>();
      return source.pipe(
        map((change): ChangeWithPrevious<Row> => {
          const table = JSON.stringify([change.schema, change.table]);
          if (change.op === 'truncate') {
            tables.delete(table);
            return { change, previous: undefined };
          }
          const key = rowKey(change);
          let last = tables.get(table);
          if (last === undefined) tables.set(table, (last = new Map()));
          const previous = last.get(key);
          last.set(key, change);
          return { change, previous };
        }),
      );
    });
}
