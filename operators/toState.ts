import { Observable, type OperatorFunction } from 'rxjs';
import { rowKeyString } from '../src/change.js';
import type { Change } from '../src/types.js';

/** How `toState` names a row in its map. */
export type StateKeyOf<Row> = (change: Change<Row>) => string;

/**
 * The default state key: the primary-key value as a string for a one-column key
 * (`'42'`), or the key values joined by NUL for a composite key.
 */
export function stateKey<Row>(change: Change<Row>): string {
  return rowKeyString(Object.keys(change.key), change.key);
}

/**
 * Folds changes into the current rows: a `Map` from row key to row, emitted anew after
 * each change (or each batch, if the source emits arrays).
 *
 * Intuition: `scan` that applies inserts and updates as `set`, deletes as `delete` and
 * truncates as `clear`.
 *
 * ```
 * source:   --i1----u1----i2----d1----t-----i3--|     (t = truncate)
 * toState:  --A-----B-----C-----D-----E-----F---|
 *   A = {1: v1}  B = {1: v1'}  C = {1: v1', 2: v2}  D = {2: v2}  E = {}  F = {3: v3}
 * ```
 *
 * A truncate (`TRUNCATE`: every row of the table is gone) empties the map, rows from
 * `initial` included, without calling `keyOf` (it names no row). `toState` folds one
 * table, as its default key (the key values only) assumes: a truncate clears every row.
 *
 * Each emission is a fresh `Map` (copying costs O(rows)); feed it batches
 * (`batchChanges`) when a burst should produce one emission. For a table's live state,
 * seeded with a consistent snapshot, use `tide.state$()`.
 *
 * @example
 * ```ts
 * changes.pipe(toState()).subscribe((rows) => render([...rows.values()]));
 * // Logs nothing; renders the current rows after every change.
 * ```
 * @param keyOf - names a row; by default its primary key (see {@link stateKey}).
 * @param initial - rows to start from (for example a snapshot).
 * @returns an operator emitting the current rows after each change or batch.
 */
export function toState<Row>(
  keyOf: StateKeyOf<Row> = stateKey,
  initial: ReadonlyMap<string, Row> = new Map(),
): OperatorFunction<Change<Row> | readonly Change<Row>[], ReadonlyMap<string, Row>> {
  return (source) =>
    new Observable<ReadonlyMap<string, Row>>((subscriber) => {
      const rows = new Map(initial);
      const apply = (change: Change<Row>): void => {
        if (change.op === 'truncate') rows.clear();
        else if (change.op === 'delete') rows.delete(keyOf(change));
        else if (change.new !== undefined) rows.set(keyOf(change), change.new);
      };
      return source.subscribe({
        next: (value) => {
          try {
            if (isBatch(value)) value.forEach(apply);
            else apply(value);
          } catch (error) {
            subscriber.error(error);
            return;
          }
          subscriber.next(new Map(rows));
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      });
    });
}

function isBatch<Row>(value: Change<Row> | readonly Change<Row>[]): value is readonly Change<Row>[] {
  return Array.isArray(value);
}
