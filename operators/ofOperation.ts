import { filter, type OperatorFunction } from 'rxjs';
import { markProcessed } from '../src/delivery.js';
import { PgTideError } from '../src/errors.js';
import type { Change, Operation } from '../src/types.js';

/** A {@link Change} whose `op` is known to be one of `Op`. */
export type ChangeOf<Row, Op extends Operation> = Change<Row> & {
  /** One of the operations `ofOperation` kept. */
  readonly op: Op;
};

const operations: readonly Operation[] = ['insert', 'update', 'delete', 'truncate'];

/**
 * Emits only the changes whose operation is one of `ops`, typed as such.
 *
 * Intuition: `filter((c) => ops.includes(c.op))` that also narrows `op`.
 *
 * ```
 * source:                      --i--u--d--t--u--|     (t = truncate)
 * ofOperation('update'):       -----u--------u--|
 * ofOperation('delete',
 *             'truncate'):     --------d--t-----|
 * ```
 *
 * A truncate (`TRUNCATE`: every row of the table is gone) is an operation of its own:
 * `ofOperation('delete')` drops it, so name `'truncate'` too where "rows went away"
 * matters.
 *
 * Each change it drops is marked processed ({@link markProcessed}): a dropped change
 * needs no further work, so it never holds back the position of a durable consumer
 * (`changes$(table, { consumer })`) whose pipeline ends in `acknowledge()`.
 *
 * @example
 * ```ts
 * import { ofOperation } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(ofOperation('insert', 'delete'))
 *   .subscribe((c) => console.log(c.op, c.key));
 * // INSERT INTO users (id, name) VALUES (1, 'Ann');
 * // UPDATE users SET name = 'Bo' WHERE id = 1;
 * // DELETE FROM users WHERE id = 1;
 * // Logs:
 * // insert { id: 1 }
 * // delete { id: 1 }
 * ```
 * @param ops - the operations to keep; at least one of `'insert'`, `'update'`, `'delete'`,
 *   `'truncate'`.
 * @returns an operator emitting the matching changes, each typed {@link ChangeOf}`<Row, Op>`.
 * @throws PgTideError `INVALID_OPTIONS` if `ops` is empty or names an unknown operation.
 * @see markProcessed
 */
export function ofOperation<Row, Op extends Operation>(
  ...ops: [Op, ...Op[]]
): OperatorFunction<Change<Row>, ChangeOf<Row, Op>> {
  const list: readonly unknown[] = ops;
  if (list.length === 0) {
    throw new PgTideError('INVALID_OPTIONS', 'ofOperation() needs at least one operation', { ops: [] });
  }
  for (const op of list) {
    if (!operations.includes(op as Operation)) {
      throw new PgTideError(
        'INVALID_OPTIONS',
        `ofOperation(): unknown operation ${JSON.stringify(op)}; use 'insert', 'update', 'delete' or 'truncate'`,
        { ops: [...list], invalid: op },
      );
    }
  }
  const keep = new Set<Operation>(ops);
  return filter((change: Change<Row>): change is ChangeOf<Row, Op> => {
    if (keep.has(change.op)) return true;
    markProcessed(change);
    return false;
  });
}
