import {
  asyncScheduler,
  Observable,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import { PgTideError } from '../src/errors.js';
import type { Change } from '../src/types.js';

/** Options of {@link batchChanges}. Give `size`, `time`, or both. */
export interface BatchOptions {
  /** Emit a batch as soon as it holds this many changes. An integer >= 1. */
  readonly size?: number;
  /** Emit a batch this many milliseconds after its first change arrived. A finite number >= 0. */
  readonly time?: number;
}

/**
 * Collects changes into arrays, emitting a batch when it reaches `size` changes or
 * `time` milliseconds after the batch's first change, whichever comes first.
 *
 * Intuition: `bufferTime` + `bufferCount`, but the clock starts at a batch's first change,
 * so quiet periods produce no empty arrays.
 *
 * ```
 * source:                          -a-b-c-d------e-----|
 * batchChanges({ size: 3,
 *                time: 4 }):       -----x-----y------z-|     x = [a,b,c], y = [d], z = [e]
 *
 * source:                          -a-b-|
 * batchChanges({ time: 10 }):      -----(x|)                 x = [a,b] (flushed on complete)
 * ```
 *
 * A truncate (`TRUNCATE`: every row of its table is gone) is batched like any other
 * change, in its place: it neither ends a batch nor starts one early. Follow with
 * `coalesce()` to let it drop the changes of its table before it in the batch.
 *
 * Never emits an empty array. On completion the unfinished batch is emitted, then the
 * output completes. On a source error the unfinished batch is discarded and the error is
 * passed on at once: its changes were never acknowledged, so a durable consumer gets them
 * again when it resumes. Unsubscribing cancels the timer.
 *
 * @example
 * ```ts
 * import { batchChanges } from 'pgtide/operators';
 *
 * tide.changes$('users').pipe(batchChanges({ size: 100, time: 50 }))
 *   .subscribe((batch) => console.log(batch.length, batch.map((c) => c.op)));
 * // INSERT INTO users (id, name) VALUES (1, 'Ann'), (2, 'Bo');
 * // Logs (at most 50 ms later):
 * // 2 [ 'insert', 'insert' ]
 * ```
 * @param options - `size` (changes per batch) and/or `time` (ms from a batch's first change).
 * @param scheduler - schedules the batch timer; `asyncScheduler` by default.
 * @returns an operator emitting non-empty arrays of changes in arrival order.
 * @throws PgTideError `INVALID_OPTIONS` if neither option is given, `size` is not an
 *   integer >= 1, or `time` is negative, `NaN` or infinite.
 */
export function batchChanges<Row>(
  options: BatchOptions,
  scheduler: SchedulerLike = asyncScheduler,
): OperatorFunction<Change<Row>, Change<Row>[]> {
  const { size, time } = validate(options);
  return (source) =>
    new Observable<Change<Row>[]>((subscriber) => {
      let batch: Change<Row>[] = [];
      let timer: Subscription | undefined;

      const emit = (): void => {
        // Reset state before emitting: downstream may synchronously cause new changes.
        const full = batch;
        batch = [];
        timer?.unsubscribe();
        timer = undefined;
        subscriber.next(full);
      };

      const upstream = source.subscribe({
        next: (change) => {
          batch.push(change);
          if (batch.length >= size) {
            emit();
          } else if (batch.length === 1 && time !== undefined) {
            timer = scheduler.schedule(emit, time);
          }
        },
        error: (err: unknown) => {
          batch = [];
          timer?.unsubscribe();
          timer = undefined;
          subscriber.error(err);
        },
        complete: () => {
          if (batch.length > 0) emit();
          subscriber.complete();
        },
      });

      return () => {
        upstream.unsubscribe();
        timer?.unsubscribe();
        timer = undefined;
        batch = [];
      };
    });
}

function validate(options: BatchOptions): { size: number; time: number | undefined } {
  if (typeof options !== 'object' || options === null) {
    throw new PgTideError('INVALID_OPTIONS', 'batchChanges() needs an options object { size, time }', { options });
  }
  const { size, time } = options;
  if (size === undefined && time === undefined) {
    throw new PgTideError('INVALID_OPTIONS', 'batchChanges() needs size, time, or both', { path: 'options' });
  }
  if (size !== undefined && (typeof size !== 'number' || !Number.isInteger(size) || size < 1)) {
    throw new PgTideError('INVALID_OPTIONS', `batchChanges(): size must be an integer >= 1, got ${String(size)}`, {
      path: 'size',
      size,
    });
  }
  if (time !== undefined && (typeof time !== 'number' || !Number.isFinite(time) || time < 0)) {
    throw new PgTideError('INVALID_OPTIONS', `batchChanges(): time must be a finite number >= 0, got ${String(time)}`, {
      path: 'time',
      time,
    });
  }
  return { size: size ?? Number.POSITIVE_INFINITY, time };
}
