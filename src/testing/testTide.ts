import { isDeepStrictEqual } from 'node:util';
import { defer, Observable, throwError, type SchedulerLike } from 'rxjs';
import { selectColumns } from '../change.js';
import { Ledger, recordDelivery } from '../delivery.js';
import { PgTideError } from '../errors.js';
import { NOTHING_VISIBLE, type Position } from '../log.js';
import type { Change, ChangesOptions, RowData } from '../types.js';
import { splitTable } from './builders.js';

/**
 * One move of a durable consumer's processed position, as {@link TestTide.acknowledged}
 * reports it.
 *
 * @example
 * ```ts
 * // The consumer processed everything up to change b, at frame 7:
 * const moved: Acknowledgement = { id: b.id, frame: 7 };
 * ```
 */
export interface Acknowledgement {
  /** Id of the change the position moved to: everything delivered up to it is processed. */
  readonly id: string;
  /** `scheduler.now()` when it moved (the marble frame), or `Date.now()` without a scheduler. */
  readonly frame: number;
}

/**
 * A stand-in for `Tide` in unit tests: `changes$()` emits what you give it with
 * {@link TestTide.source}, and durable consumer streams keep acknowledgement as the
 * real ones do, so pipelines ending in `acknowledge()` can be tested with marbles.
 * Create one with {@link createTestTide}. Code under test can take the `changes$`
 * function (or an object with it) instead of a whole `Tide`.
 *
 * @example
 * ```ts
 * const testTide: TestTide = createTestTide(testScheduler);
 * testTide.source('users', cold('-a-|', { a: insert('users', { id: 1 }) }));
 * const users$ = testTide.changes$('users', { consumer: 'audit' });
 * ```
 */
export interface TestTide {
  /**
   * Sets what `changes$(table)` emits: usually a marble `hot()` or `cold()` Observable
   * of changes built with `insert`, `update`, `del` and `truncate`. Each subscription of
   * `changes$(table)` subscribes to it; setting it again affects later subscriptions.
   *
   * @example
   * ```ts
   * testTide.source('mail_users', hot('-a-b-|', { a, b }));
   * ```
   * @param table - `'name'` (schema `public`) or `'schema.name'`.
   */
  source(table: string, changes: Observable<Change<unknown>>): void;

  /**
   * The changes of `table`'s {@link TestTide.source}, like `tide.changes$()`.
   *
   * - `consumer`: each change is delivered in a real delivery ledger of that consumer, so
   *   `acknowledge()`, `markProcessed` and pgtide's dropping operators move its position
   *   (see {@link TestTide.acknowledged}). Like a real stream, it emits its own copy of
   *   each change: compare with marbles or `toEqual`, not `toBe`. A new subscription
   *   starts at the consumer's processed position; nothing is replayed.
   * - `rowId`: only changes whose key equals it (a value for a one-column key, or an
   *   object of key columns), and every truncate. Numbers, bigints and strings compare
   *   by their text.
   * - `columns` (or `field`): updates that changed none of them are dropped; `new` and
   *   `old` keep the key columns plus these. A truncate passes as it is.
   *
   * As in a real stream, a truncate (which removes every row) reaches every stream of
   * its table.
   * - `from`, `maxInFlight` and `schema` are ignored.
   *
   * Without `consumer`, `rowId`, `columns` and `field`, the source's changes pass through
   * as the same objects. A table without a source errors the stream with `UNKNOWN_TABLE`.
   *
   * @example
   * ```ts
   * const mailer$ = testTide.changes$('mail_users', { consumer: 'mailer', columns: ['quota_bytes'] });
   * ```
   */
  changes$<Row = RowData>(table: string, options?: ChangesOptions<Row>): Observable<Change<Row>>;

  /**
   * Every move of `consumer`'s processed position so far, oldest first: the end of the
   * longest run of processed changes, in delivery order, and the frame it moved at. A
   * change a `columns`/`rowId` filter drops is processed at once, as in a real stream.
   *
   * @example
   * ```ts
   * expect(testTide.acknowledged('mailer')).toEqual([{ id: b.id, frame: 7 }]);
   * ```
   * @returns a copy; `[]` for a consumer that never moved.
   */
  acknowledged(consumer: string): Acknowledgement[];

  /**
   * Id of the last change `consumer` has processed (the latest of {@link TestTide.acknowledged}).
   *
   * @example
   * ```ts
   * expect(testTide.processedId('mailer')).toBe(b.id);
   * ```
   * @returns `undefined` while its position has not moved.
   */
  processedId(consumer: string): string | undefined;

  /**
   * The dead letters `consumer`'s handlers left (see `processChanges`), oldest first:
   * the change's id, the last error's message and the attempts made.
   *
   * @example
   * ```ts
   * expect(testTide.deadLetters('billing')).toEqual([{ id: a.id, error: 'card declined', attempts: 3 }]);
   * ```
   * @returns a copy; `[]` for a consumer without any.
   */
  deadLetters(consumer: string): TestDeadLetter[];
}

/** A dead letter as {@link TestTide.deadLetters} records it. */
export interface TestDeadLetter {
  /** The change's id. */
  readonly id: string;
  /** The last error's message. */
  readonly error: string;
  /** Handler calls made. */
  readonly attempts: number;
}

/**
 * Creates a {@link TestTide}: a fake `Tide` for marble tests of pipelines, durable
 * consumers and `acknowledge()` included, without a database.
 *
 * Intuition: `changes$()` replays the Observable you set per table, and remembers when
 * each consumer's position moves.
 *
 * ```
 * source('mail_users'):                    -a-b-c-|
 * changes$('mail_users', { consumer }):    -a-b-c-|   (a, b, c delivered, position moves on acknowledge())
 * ```
 *
 * @example
 * ```ts
 * import { TestScheduler } from 'rxjs/testing';
 * import { acknowledge } from 'pgtide/operators';
 * import { createTestTide, insert } from 'pgtide/testing';
 *
 * const testScheduler = new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
 * const testTide = createTestTide(testScheduler);
 * const a = insert('mail_users', { id: 1, quota_bytes: 100 });
 * testScheduler.run(({ hot, expectObservable }) => {
 *   testTide.source('mail_users', hot('-a-|', { a }));
 *   expectObservable(testTide.changes$('mail_users', { consumer: 'mailer' }).pipe(acknowledge())).toBe('-a-|', { a });
 * });
 * console.log(testTide.acknowledged('mailer'));
 * // Logs:
 * // [ { id: '1', frame: 1 } ]
 * ```
 * @param scheduler - whose `now()` stamps {@link Acknowledgement.frame}; `Date.now()` without one.
 * @returns a fresh fake with no sources and no consumers.
 */
export function createTestTide(scheduler?: SchedulerLike): TestTide {
  return new FakeTide(scheduler);
}

interface ConsumerState {
  /** Where a new subscription starts. */
  position: Position;
  /** Delivery sequence of the last change delivered to the consumer. */
  sequence: bigint;
  /** Change id of each delivered position (`pos` = delivery sequence). */
  readonly ids: Map<bigint, string>;
  readonly moves: Acknowledgement[];
  readonly deadLetters: TestDeadLetter[];
}

const noop = (): void => undefined;
const quiet = { debug: noop, info: noop, warn: noop, error: noop };

class FakeTide implements TestTide {
  private readonly sources = new Map<string, Observable<Change<unknown>>>();
  private readonly consumers = new Map<string, ConsumerState>();

  constructor(private readonly scheduler: SchedulerLike | undefined) {}

  source(table: string, changes: Observable<Change<unknown>>): void {
    this.sources.set(qualified(table), changes);
  }

  changes$<Row = RowData>(table: string, options: ChangesOptions<Row> = {}): Observable<Change<Row>> {
    const name = qualified(table);
    return defer(() => {
      const source = this.sources.get(name);
      if (!source) {
        const message = `createTestTide(): no source for ${name}; call testTide.source('${table}', observable) first`;
        return throwError(() => new PgTideError('UNKNOWN_TABLE', message, { table: name }));
      }
      const select = selector(options);
      const consumer = options.consumer;
      if (consumer === undefined) return source.pipe(selectAll(select));
      return this.consume(consumer, source, select);
    }) as Observable<Change<Row>>;
  }

  deadLetters(consumer: string): TestDeadLetter[] {
    return [...(this.consumers.get(consumer)?.deadLetters ?? [])];
  }

  acknowledged(consumer: string): Acknowledgement[] {
    return [...(this.consumers.get(consumer)?.moves ?? [])];
  }

  processedId(consumer: string): string | undefined {
    return this.consumers.get(consumer)?.moves.at(-1)?.id;
  }

  /** A durable consumer stream: delivers each selected change in a real ledger. */
  private consume(
    consumer: string,
    source: Observable<Change<unknown>>,
    select: (change: Change<unknown>) => Change<unknown> | undefined,
  ): Observable<Change<unknown>> {
    let state = this.consumers.get(consumer);
    if (!state) {
      state = { position: sequencePosition(0n), sequence: 0n, ids: new Map(), moves: [], deadLetters: [] };
      this.consumers.set(consumer, state);
    }
    const consumerState = state;
    return new Observable<Change<unknown>>((subscriber) => {
      const ledger = new Ledger({
        start: consumerState.position,
        save: () => Promise.resolve(),
        flushDelay: 0,
        logger: quiet,
        onProcessed: (position) => {
          consumerState.position = position;
          consumerState.moves.push({ id: consumerState.ids.get(position.afterId!)!, frame: this.now() });
        },
        deadLetter: (id, error, attempts) => {
          consumerState.deadLetters.push({ id, error, attempts });
          return Promise.resolve();
        },
      });
      const upstream = source.subscribe({
        next: (change) => {
          consumerState.sequence += 1n;
          // Positions follow delivery order, whatever the ids look like.
          const position = sequencePosition(consumerState.sequence);
          consumerState.ids.set(consumerState.sequence, change.id);
          const selected = select(change);
          if (selected === undefined) {
            ledger.pass(position);
            return;
          }
          // Each delivery is its own object, as in a real stream.
          const delivered = selected === change ? { ...change } : selected;
          recordDelivery(delivered, ledger.deliver(position, delivered.id));
          subscriber.next(delivered);
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      });
      return () => {
        upstream.unsubscribe();
        void ledger.close(false);
      };
    });
  }

  private now(): number {
    return this.scheduler ? this.scheduler.now() : Date.now();
  }
}

function qualified(table: string): string {
  const { schema, name } = splitTable(table);
  return `${schema}.${name}`;
}

/** Emits `select(change)` for each change, skipping `undefined`. */
function selectAll(
  select: (change: Change<unknown>) => Change<unknown> | undefined,
): (source: Observable<Change<unknown>>) => Observable<Change<unknown>> {
  return (source) =>
    new Observable<Change<unknown>>((subscriber) =>
      source.subscribe({
        next: (change) => {
          const selected = select(change);
          if (selected !== undefined) subscriber.next(selected);
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      }),
    );
}

/** The `rowId` filter and the `columns`/`field` filter and projection; `undefined` drops a change. */
function selector(options: ChangesOptions<unknown>): (change: Change<unknown>) => Change<unknown> | undefined {
  const { rowId } = options;
  const watched = options.field !== undefined ? [options.field] : options.columns;
  return (change) => {
    // A TRUNCATE removes every row: each stream of the table hears of it, as in src/changes.ts.
    if (change.op === 'truncate') return change;
    if (rowId !== undefined && !isRow(change.key, rowId)) return undefined;
    if (watched === undefined) return change;
    return selectColumns(change, watched, new Set([...Object.keys(change.key), ...watched]));
  };
}

function isRow(key: Readonly<Record<string, unknown>>, rowId: unknown): boolean {
  if (typeof rowId === 'object' && rowId !== null && !Array.isArray(rowId)) {
    const wanted = Object.entries(rowId);
    return wanted.length > 0 && wanted.every(([column, value]) => sameKeyValue(key[column], value));
  }
  const columns = Object.keys(key);
  return columns.length === 1 && sameKeyValue(key[columns[0]!], rowId);
}

function sameKeyValue(a: unknown, b: unknown): boolean {
  const scalar = (value: unknown): boolean => ['number', 'bigint', 'string'].includes(typeof value);
  return scalar(a) && scalar(b) ? String(a) === String(b) : isDeepStrictEqual(a, b);
}

/** A stand-in position numbered in delivery order: the fake has no snapshots. */
function sequencePosition(sequence: bigint): Position {
  return { era: 1, base: NOTHING_VISIBLE, upto: NOTHING_VISIBLE, afterId: sequence };
}
