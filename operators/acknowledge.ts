import { Observable, type MonoTypeOperatorFunction } from 'rxjs';
import { markProcessed } from '../src/delivery.js';
import type { Change, Transaction } from '../src/types.js';

/**
 * Acknowledges each change (or batch of changes, or transaction from `transactions$`)
 * that reaches it, for the durable consumer that delivered it, and passes it on.
 *
 * Intuition: put it last; what gets here is done, and the consumer's position moves to
 * the end of the longest run of done changes, in delivery order.
 *
 * ```
 * delivered:        -1-2-3-4-5-
 * reaches ack:      ---1-2---4--3-5
 * consumer position:---1-2-------4-5     (4 waits for 3; then 4, then 5)
 * ```
 *
 * Acknowledgement is contiguous, so `mergeMap` with concurrency may finish changes out
 * of order without the position ever passing a change still in progress. Positions are
 * written in batches (`acknowledgeFlushDelay`), and on unsubscribe and `tide.close()`.
 * pgtide's operators that drop or merge changes (`ofOperation`, `whereChanged`,
 * `filterRows`, `debounceByKey`, `coalesce`) mark the dropped ones processed, so they
 * never hold the position back; with other dropping operators, call `markProcessed`.
 * Changes that did not come from a `consumer` stream pass through untouched.
 *
 * @example
 * ```ts
 * tide.changes$('mail_users', { consumer: 'provisioner' }).pipe(
 *   mergeMap((change) => provision(change).then(() => change), 4),
 *   acknowledge(),
 * ).subscribe((change) => console.log('done', change.id));
 * // Logs, as provisioning finishes:
 * // done 17
 * // done 18
 * ```
 * @returns an operator that acknowledges and re-emits each value.
 * @see markProcessed
 */
export function acknowledge<T extends Change<unknown> | readonly Change<unknown>[] | Transaction<unknown>>(): MonoTypeOperatorFunction<T> {
  return (source) =>
    new Observable<T>((subscriber) =>
      source.subscribe({
        next: (value) => {
          if (isBatch(value)) for (const change of value) markProcessed(change);
          else markProcessed(value as Change<unknown> | Transaction<unknown>);
          subscriber.next(value);
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      }),
    );
}

function isBatch(value: Change<unknown> | readonly Change<unknown>[] | Transaction<unknown>): value is readonly Change<unknown>[] {
  return Array.isArray(value);
}
