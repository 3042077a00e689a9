import { from, Observable, Subscription, timer, type ObservableInput, type OperatorFunction } from 'rxjs';
import { canKeepAsDeadLetter, keepAsDeadLetter, markProcessed } from '../src/delivery.js';
import { PgTideError } from '../src/errors.js';
import type { Change } from '../src/types.js';
import { rowKey } from './rowKey.js';

/** Options of {@link processChanges}. */
export interface ProcessChangesOptions {
  /** Handler calls in flight at once (never two for one row). Default 1. */
  readonly concurrency?: number;
  /** Calls per change before it is given up (1: no retry; `Infinity`: retry until it succeeds). Default 3. */
  readonly attempts?: number;
  /** Milliseconds to wait before retry number `attempt` (1, 2, ...). Default `100 * 2 ** (attempt - 1)`. */
  readonly backoff?: (attempt: number) => number;
  /**
   * What happens to a change whose last attempt failed. `'dead-letter'` (the default)
   * keeps it in its consumer's dead letters (see `tide.deadLetters()`), acknowledges it,
   * and goes on, its row's later changes too; a change that came from no durable
   * consumer has nowhere to be kept, so the stream errors as with `'stop'`. `'stop'`
   * errors the stream with `PROCESSING_FAILED` without acknowledging the change: a
   * durable consumer gets it again when it resumes.
   */
  readonly onExhausted?: 'dead-letter' | 'stop';
}

type Processable = Change<unknown> | readonly Change<unknown>[];

/**
 * Runs `handler` for each change (or batch of changes, after `batchChanges`), at most
 * `concurrency` at once and never two for the same row: a change waits while an earlier
 * change of its row is pending or running, so each row's changes are handled in
 * delivery order. When the handler resolves, the change is acknowledged (see
 * `acknowledge()`) and emitted. A handler that throws or rejects is called again after
 * `backoff(attempt)` ms, up to `attempts` calls; then the change goes to its consumer's
 * dead letters, acknowledged and not emitted (with `onExhausted: 'stop'`, or for a
 * stream without a consumer, the stream errors with `PROCESSING_FAILED` carrying the
 * change and the last error, and the change is not acknowledged). Every change that
 * enters is acknowledged, dead-lettered, or the stream errors, so it cannot stall a
 * consumer. A batch (after `batchChanges`) is one handler call, acknowledged or
 * dead-lettered as a whole.
 *
 * ```
 * source (rows a, a, b):   -a1-a2-b1-|
 * handler takes 3 frames, concurrency 2
 * output:                  ----a1-(b1 a2)-|   a2 waits for a1; b1 runs beside a1
 * ```
 *
 * @example
 * ```ts
 * tide.changes$('orders', { consumer: 'billing' })
 *   .pipe(processChanges((change) => charge(change.new!), { concurrency: 16, attempts: 5 }))
 *   .subscribe();
 * ```
 * @param handler - the work for one change or batch: a promise, an observable (its
 *   completion counts), or a plain value.
 * @returns an operator emitting each change (or batch) once its handler succeeded.
 * @throws PgTideError `INVALID_OPTIONS` for a concurrency or attempts below 1.
 */
export function processChanges<T extends Change<unknown> | readonly Change<unknown>[]>(
  handler: (value: T) => ObservableInput<unknown> | unknown,
  options: ProcessChangesOptions = {},
): OperatorFunction<T, T> {
  const concurrency = options.concurrency ?? 1;
  const attempts = options.attempts ?? 3;
  const backoff = options.backoff ?? ((attempt: number) => 100 * 2 ** (attempt - 1));
  const onExhausted = options.onExhausted ?? 'dead-letter';
  if (onExhausted !== 'dead-letter' && onExhausted !== 'stop') {
    throw new PgTideError('INVALID_OPTIONS', "processChanges: onExhausted must be 'dead-letter' or 'stop'", { option: 'onExhausted' });
  }
  for (const [name, value] of [['concurrency', concurrency], ['attempts', attempts]] as const) {
    if (!(Number.isInteger(value) || (name === 'attempts' && value === Infinity)) || value < 1) {
      throw new PgTideError('INVALID_OPTIONS', `processChanges: ${name} must be an integer of at least 1`, { option: name, value });
    }
  }
  return (source) =>
    new Observable<T>((subscriber) => {
      /** Waiting values, in arrival order, with the rows each one touches. */
      const waiting: Array<{ readonly value: T; readonly rows: readonly string[] }> = [];
      const busyRows = new Set<string>();
      const running = new Set<Subscription>();
      let sourceDone = false;

      const finishIfDone = (): void => {
        if (sourceDone && waiting.length === 0 && running.size === 0) subscriber.complete();
      };

      const start = (entry: (typeof waiting)[number]): void => {
        for (const row of entry.rows) busyRows.add(row);
        // The handle exists before the first call: a handler may complete synchronously.
        const handle = new Subscription();
        /** The entry is done (processed, or kept as a dead letter): its rows may go on. */
        const finish = (emitted?: T): void => {
          if (!running.delete(handle)) return;
          for (const row of entry.rows) busyRows.delete(row);
          if (emitted !== undefined) subscriber.next(emitted);
          pump();
          finishIfDone();
        };
        const succeeded = (): void => {
          if (handle.closed) return;
          for (const change of changesOf(entry.value)) markProcessed(change);
          finish(entry.value);
        };
        const exhausted = (error: unknown): void => {
          const failed = (reason: string, cause: unknown): void =>
            subscriber.error(
              new PgTideError(
                'PROCESSING_FAILED',
                `processChanges: the handler failed ${attempts} time(s) for ${describe(entry.value)}: ${String(error)}${reason}`,
                { attempts, change: entry.value },
                { cause },
              ),
            );
          if (onExhausted === 'stop') return failed('', error);
          const changes = changesOf(entry.value);
          if (!changes.every(canKeepAsDeadLetter)) {
            return failed(' (it came from no durable consumer, so no dead letter can keep it)', error);
          }
          void keepAll(changes, error, attempts).then(
            () => finish(),
            (failure: unknown) => failed(`; keeping it as a dead letter failed too: ${String(failure)}`, failure),
          );
        };
        // Calls by hand rather than through defer/retry: this runs once per change.
        const call = (attempt: number): void => {
          if (handle.closed) return;
          const failedCall = (error: unknown): void => {
            if (handle.closed) return;
            if (attempt >= attempts) exhausted(error);
            else handle.add(timer(backoff(attempt)).subscribe(() => call(attempt + 1)));
          };
          let result: unknown;
          try {
            result = handler(entry.value);
          } catch (error) {
            failedCall(error);
            return;
          }
          if (isPromiseLike(result)) result.then(succeeded, failedCall);
          else if (isObservableInput(result)) handle.add(from(result).subscribe({ error: failedCall, complete: succeeded }));
          else succeeded();
        };
        running.add(handle);
        call(1);
      };

      /**
       * Starts what may start: in arrival order, skipping values whose rows an earlier
       * value holds. Not re-entered: a handler that completes synchronously asks for
       * another pass instead, taken once this one is over.
       */
      let pumping = false;
      let pumpAgain = false;
      const pump = (): void => {
        if (pumping) {
          pumpAgain = true;
          return;
        }
        pumping = true;
        do {
          pumpAgain = false;
          // Rows taken in this pass (started, or waiting behind a busy row: what follows them
          // on those rows must wait too), besides those still running.
          const held = new Set<string>();
          for (let index = 0; index < waiting.length && running.size < concurrency; ) {
            const entry = waiting[index]!;
            if (entry.rows.some((row) => conflicts(busyRows, row) || conflicts(held, row))) {
              for (const row of entry.rows) held.add(row);
              index += 1;
              continue;
            }
            waiting.splice(index, 1);
            start(entry);
            for (const row of entry.rows) held.add(row);
          }
        } while (pumpAgain);
        pumping = false;
      };

      const upstream = source.subscribe({
        next: (value) => {
          waiting.push({ value, rows: changesOf(value).map(rowOf) });
          pump();
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          sourceDone = true;
          finishIfDone();
        },
      });
      return () => {
        upstream.unsubscribe();
        for (const subscription of running) subscription.unsubscribe();
      };
    });
}

/** Keeps every change of a value as a dead letter, one after the other. */
async function keepAll(changes: readonly Change<unknown>[], error: unknown, attempts: number): Promise<void> {
  for (const change of changes) await keepAsDeadLetter(change, error, attempts);
}

function changesOf(value: Processable): readonly Change<unknown>[] {
  return Array.isArray(value) ? (value as readonly Change<unknown>[]) : [value as Change<unknown>];
}

/** Whether `row` must wait for what `held` holds: the row itself, its table's truncate, or (for a truncate) any row of its table. */
function conflicts(held: ReadonlySet<string>, row: string): boolean {
  const cut = row.indexOf('\u0000');
  if (cut >= 0) return held.has(row) || held.has(row.slice(0, cut));
  for (const other of held) if (other === row || other.startsWith(`${row}\u0000`)) return true;
  return false;
}

/** A row of a table; a truncate holds its whole table. */
function rowOf(change: Change<unknown>): string {
  const table = `${change.schema}.${change.table}`;
  return change.op === 'truncate' ? table : `${table}\u0000${rowKey(change)}`;
}

function describe(value: Processable): string {
  const changes = changesOf(value);
  return changes.length === 1 ? `change ${changes[0]!.id}` : `a batch of ${changes.length} changes (${changes[0]?.id}...)`;
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function';
}

function isObservableInput(value: unknown): value is ObservableInput<unknown> {
  if (value === null || (typeof value !== 'object' && typeof value !== 'function')) return false;
  return (
    typeof (value as { then?: unknown }).then === 'function' ||
    typeof (value as { subscribe?: unknown }).subscribe === 'function' ||
    Symbol.iterator in (value as object) ||
    Symbol.asyncIterator in (value as object)
  );
}
