import { filter, type MonoTypeOperatorFunction } from 'rxjs';
import { markProcessed } from '../src/delivery.js';
import type { Change } from '../src/types.js';

/**
 * Emits the changes whose row satisfies `predicate`: the row after the change for inserts
 * and updates, the row before it for deletes. Truncates always pass.
 *
 * Intuition: a `WHERE` clause on the row each change leaves behind (or removes).
 *
 * ```
 * source:                         --a(active)--b(inactive)--c(active)--t--|   (t = truncate)
 * filterRows((r) => r.active):    --a----------------------c----------t--|
 * ```
 *
 * A change without that row (no `new` on an insert or update, no `old` on a delete) is
 * dropped without calling `predicate`. If `predicate` throws, the error is sent
 * downstream and the source is unsubscribed. Note that an update that moves a row out
 * of the set (`active: true -> false`) is dropped, because only the new row is tested.
 *
 * A truncate (`TRUNCATE`: every row of its table is gone) has no row to test, but it
 * removes the matching rows too, so it passes through without calling `predicate`: a
 * subscriber that keeps the matching rows must hear of it.
 *
 * Each change it drops is marked processed ({@link markProcessed}): it needs no further
 * work, so it never holds back the position of a durable consumer whose pipeline ends in
 * `acknowledge()`. A change whose `predicate` throws is not marked: the stream errors and
 * the change is delivered again when the consumer resumes.
 *
 * @example
 * ```ts
 * import { filterRows } from 'pgtide/operators';
 *
 * tide.changes$<{ id: number; plan: string }>('users')
 *   .pipe(filterRows((row) => row.plan === 'pro'))
 *   .subscribe((c) => console.log(c.op, c.key));
 * // INSERT INTO users (id, plan) VALUES (1, 'free'), (2, 'pro');
 * // DELETE FROM users WHERE id = 2;
 * // Logs:
 * // insert { id: 2 }
 * // delete { id: 2 }
 * ```
 * @param predicate - called with the row and the whole change; return `true` to keep it.
 * @returns an operator emitting the changes whose row matches.
 * @see markProcessed
 */
export function filterRows<Row>(predicate: (row: Row, change: Change<Row>) => boolean): MonoTypeOperatorFunction<Change<Row>> {
  return filter((change) => {
    // It removes every row, the matching ones included.
    if (change.op === 'truncate') return true;
    const row = change.op === 'delete' ? change.old : change.new;
    if (row !== undefined && predicate(row, change)) return true;
    markProcessed(change);
    return false;
  });
}
