import { filter, type MonoTypeOperatorFunction } from 'rxjs';
import type { Change } from '../src/types.js';

/**
 * Emits the changes whose row satisfies `predicate`: the row after the change for inserts
 * and updates, the row before it for deletes.
 *
 * Intuition: a `WHERE` clause on the row each change leaves behind (or removes).
 *
 * ```
 * source:                         --a(active)--b(inactive)--c(active)--|
 * filterRows((r) => r.active):    --a----------------------c----------|
 * ```
 *
 * A change without that row (no `new` on an insert or update, no `old` on a delete) is
 * dropped without calling `predicate`. If `predicate` throws, the error is sent
 * downstream and the source is unsubscribed. Note that an update that moves a row out
 * of the set (`active: true -> false`) is dropped, because only the new row is tested.
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
 */
export function filterRows<Row>(predicate: (row: Row, change: Change<Row>) => boolean): MonoTypeOperatorFunction<Change<Row>> {
  return filter((change) => {
    const row = change.op === 'delete' ? change.old : change.new;
    return row !== undefined && predicate(row, change);
  });
}
