import {
  asyncScheduler,
  Observable,
  type MonoTypeOperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import { carryDelivery } from '../src/delivery.js';
import { PgTideError } from '../src/errors.js';
import type { Change } from '../src/types.js';
import { rowKey } from './rowKey.js';

/**
 * Emits, for each row, only the latest change once `ms` milliseconds pass without another
 * change to that row.
 *
 * Intuition: `debounceTime(ms)` run separately for every row key ({@link rowKey}).
 *
 * ```
 * source:               -a-bc-------|     (a, c: row 1; b: row 2; one frame = 1 ms)
 * debounceByKey(4):     -------bc---|     (a is superseded by c)
 *
 * source:               -a-b-|
 * debounceByKey(10):    -----(ab|)        (pending changes flushed on complete)
 *
 * source:               -ab-t-c-------|   (t = truncate of the table of a and b; c: row 1)
 * debounceByKey(4):     --------t-c---|   (a and b are superseded by t)
 * ```
 *
 * A row's change never waits for another row's: each key has its own timer, restarted
 * by each change to that row. When the source completes, the pending changes are emitted
 * at once, in the order their timers would have fired (the order of each row's latest
 * change), then the output completes. A source error is passed on at once and pending
 * changes are dropped. Unsubscribing cancels every timer. Memory: one entry per row with
 * a change pending, released when it is emitted.
 *
 * A truncate (`TRUNCATE`: every row of its table is gone) supersedes every pending change
 * of its table, whatever row, and a pending truncate of it: they are dropped and the
 * truncate carries them, as a newer change to a row carries the one it supersedes. The
 * truncate itself is debounced like a change to one more row, the whole table: it is
 * emitted `ms` after it arrived unless another truncate of the table supersedes it first.
 * A change to a row after it waits for its own timer, which fires after the truncate's,
 * so the truncate is emitted first. Other tables' pending changes are not affected.
 *
 * Superseded changes are never delivered: when a newer change to a row (or a truncate of
 * its table) arrives, the pending one is dropped, and the newer one carries it
 * ({@link carryDelivery}):
 * acknowledging the newer change marks both processed, so superseded changes never hold
 * back a durable consumer whose pipeline ends in `acknowledge()`, yet are delivered again
 * if the process stops before the newer one is acknowledged. Changes still
 * pending when the source errors or the output is unsubscribed are NOT marked processed:
 * nobody handled them, so a durable consumer gets them again when it resumes. Since every
 * row waits the same `ms`, changes are emitted in the order of their arrival, so ids stay
 * increasing.
 *
 * @example
 * ```ts
 * import { debounceByKey } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(debounceByKey(500))
 *   .subscribe((c) => console.log(c.key, c.new?.name));
 * // UPDATE users SET name = 'A' WHERE id = 1;
 * // UPDATE users SET name = 'B' WHERE id = 1;  -- within 500 ms
 * // UPDATE users SET name = 'X' WHERE id = 2;
 * // Logs (500 ms after each row's last update):
 * // { id: 1 } B
 * // { id: 2 } X
 * ```
 * @param ms - quiet time per row, in milliseconds; a finite number >= 0.
 * @param scheduler - schedules the timers; `asyncScheduler` by default.
 * @returns an operator emitting each row's latest change after it settles.
 * @throws PgTideError `INVALID_OPTIONS` if `ms` is negative, `NaN` or infinite.
 * @see carryDelivery
 */
export function debounceByKey<Row>(ms: number, scheduler: SchedulerLike = asyncScheduler): MonoTypeOperatorFunction<Change<Row>> {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) {
    throw new PgTideError('INVALID_OPTIONS', `debounceByKey(): ms must be a finite number >= 0, got ${String(ms)}`, { ms });
  }
  return (source) =>
    new Observable<Change<Row>>((subscriber) => {
      // Insertion order = order of each row's latest change = order the timers fire in,
      // because every timer has the same delay: a new change moves its row to the end.
      // A truncate is pending under its own key (its table's, with an empty key).
      const pending = new Map<string, Pending<Row>>();

      const clear = (): void => {
        for (const entry of pending.values()) entry.timer.unsubscribe();
        pending.clear();
      };

      const upstream = source.subscribe({
        next: (change) => {
          let key: string;
          try {
            key = rowKey(change);
          } catch (err) {
            subscriber.error(err);
            return;
          }
          const table = tableOf(change);
          // What this change supersedes: the row's pending change; for a truncate, every
          // pending change of its table (its own earlier truncate included).
          const superseded: Change<Row>[] = [];
          const drop = (other: string, entry: Pending<Row>): void => {
            entry.timer.unsubscribe();
            pending.delete(other);
            superseded.push(entry.change);
          };
          if (change.op === 'truncate') {
            // Rare: a scan of the pending rows is fine. Deleting while iterating a Map is safe.
            for (const [other, entry] of pending) if (entry.table === table) drop(other, entry);
          } else {
            const previous = pending.get(key);
            if (previous) drop(key, previous);
          }
          const timer = scheduler.schedule(() => {
            // Forget the row before emitting: a re-entrant change to it must start a new timer.
            pending.delete(key);
            subscriber.next(change);
          }, ms);
          pending.set(key, { change, table, timer });
          // The newer change carries the row's final state: a superseded one is done
          // when the newer one is acknowledged (and delivered again if that never happens).
          for (const earlier of superseded) carryDelivery(earlier, change);
        },
        error: (err: unknown) => {
          clear();
          subscriber.error(err);
        },
        complete: () => {
          // Take the pending changes out first, so re-entrant code sees an empty map.
          const flush = [...pending.values()];
          pending.clear();
          for (const entry of flush) {
            entry.timer.unsubscribe();
            subscriber.next(entry.change);
          }
          subscriber.complete();
        },
      });

      return () => {
        upstream.unsubscribe();
        clear();
      };
    });
}

/** A change waiting for its row's quiet time. */
interface Pending<Row> {
  readonly change: Change<Row>;
  /** Its table, as {@link tableOf} names it. */
  readonly table: string;
  readonly timer: Subscription;
}

/** Names a change's table; two changes of one table get the same string. */
function tableOf(change: Change<unknown>): string {
  return JSON.stringify([change.schema, change.table]);
}
