import { filter, type MonoTypeOperatorFunction } from 'rxjs';
import { markProcessed } from '../src/delivery.js';
import { PgTideError } from '../src/errors.js';
import type { Change } from '../src/types.js';

/**
 * Emits every insert, delete and truncate, and only those updates that changed at least
 * one of `columns`.
 *
 * Intuition: "did anything I care about change?", judged by each update's `changed` list.
 *
 * ```
 * source:                   --i--u(name)--u(email)--d--t--|   (t = truncate)
 * whereChanged('email'):    --i-----------u(email)--d--t--|
 * ```
 *
 * A truncate (`TRUNCATE`: every row of its table is gone) lists no column in `changed`,
 * yet it changes every column of every row, as a delete does: it always passes.
 *
 * The test is on column names in `changed` only; values are not compared. Each update
 * it drops is marked processed ({@link markProcessed}): it needs no further work, so it
 * never holds back the position of a durable consumer whose pipeline ends in
 * `acknowledge()`.
 *
 * @example
 * ```ts
 * import { whereChanged } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(whereChanged('email'))
 *   .subscribe((c) => console.log(c.op, c.changed));
 * // INSERT INTO users (id, name, email) VALUES (1, 'Ann', 'a@x');
 * // UPDATE users SET name = 'Bo' WHERE id = 1;
 * // UPDATE users SET email = 'b@x' WHERE id = 1;
 * // Logs:
 * // insert [ 'id', 'name', 'email' ]
 * // update [ 'email' ]
 * ```
 * @param columns - column names; at least one.
 * @returns an operator that drops the updates touching none of `columns`, and nothing else.
 * @throws PgTideError `INVALID_OPTIONS` if `columns` is empty or holds a non-string.
 * @see markProcessed
 */
export function whereChanged<Row>(...columns: [string, ...string[]]): MonoTypeOperatorFunction<Change<Row>> {
  const list: readonly unknown[] = columns;
  if (list.length === 0) {
    throw new PgTideError('INVALID_OPTIONS', 'whereChanged() needs at least one column name', { columns: [] });
  }
  for (const column of list) {
    if (typeof column !== 'string' || column === '') {
      throw new PgTideError('INVALID_OPTIONS', `whereChanged(): column names must be non-empty strings, got ${String(column)}`, {
        columns: [...list],
        invalid: column,
      });
    }
  }
  const watched = new Set(columns);
  return filter((change) => {
    // Inserts, deletes and truncates (whose `changed` is empty) always pass.
    if (change.op !== 'update' || change.changed.some((column) => watched.has(column))) return true;
    markProcessed(change);
    return false;
  });
}
