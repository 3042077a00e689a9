import pg from 'pg';
import { concatMap, filter, map, Observable, timer, type Subscription } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { PgTideError, type Change, type ChangesOptions, type StreamEvent, type Tide } from '../../src/index.js';
import { markProcessed } from '../../src/delivery.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

/**
 * Expiry of durable consumers, on the real database: a stream of an expired consumer
 * stops (its own Tide's prune, another process's prune via NOTIFY, a refused save), never
 * delivers a change after a gap (prune deletes what an expired consumer had not read),
 * and prune never deletes what a live consumer has not acknowledged.
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `body` on a database of its own, dropped (with every Tide it opened) afterwards. */
async function withDatabase(body: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await createTestDatabase();
  // pg-pool's end() resolves before its connections have closed, so DROP DATABASE ... WITH (FORCE)
  // in drop() may terminate one of them: heard here, instead of as an uncaught error.
  db.pool.on('error', () => undefined);
  try {
    await body(db);
  } finally {
    await db.drop();
  }
}

/** A Tide that never prunes by itself: each test decides when pruning happens. */
const tideOf = (db: TestDatabase, options: Parameters<TestDatabase['tide']>[0] = {}): Promise<Tide> =>
  db.tide({ pruneInterval: 0, ...options });

/** What one subscription saw, in order, as it arrived from pgtide (before any handler). */
interface Recording {
  readonly changes: Change[];
  /** How many changes had been delivered when `caught-up` arrived (undefined: never). */
  caughtUpAfter: number | undefined;
  error: unknown;
  /** `Date.now()` when the error arrived. */
  erroredAt: number | undefined;
  completed: boolean;
}

/**
 * Subscribes to `events` through `handler` (what the application does with each change:
 * acknowledge, or not), recording what pgtide delivered before the handler saw it.
 */
function record(events: Observable<StreamEvent>, handler: (changes: Observable<Change>) => Observable<unknown>): Recording & { subscription: Subscription } {
  const recording: Recording = { changes: [], caughtUpAfter: undefined, error: undefined, erroredAt: undefined, completed: false };
  const changes = new Observable<Change>((subscriber) =>
    events.subscribe({
      next: (event) => {
        if (event.kind === 'change') {
          recording.changes.push(event.change);
          subscriber.next(event.change);
        } else if (event.kind === 'caught-up') {
          recording.caughtUpAfter ??= recording.changes.length;
        }
      },
      error: (error: unknown) => {
        recording.error = error;
        recording.erroredAt = Date.now();
        subscriber.error(error);
      },
      complete: () => {
        recording.completed = true;
        subscriber.complete();
      },
    }),
  );
  const subscription = handler(changes).subscribe({ error: () => undefined });
  return Object.assign(recording, { subscription });
}

/** Processes each change after `ms` of "work", one at a time, then acknowledges it. */
const slowly =
  (ms: number) =>
  (changes: Observable<Change>): Observable<Change> =>
    changes.pipe(
      concatMap((change) => timer(ms).pipe(map(() => change))),
      acknowledge(),
    );

const errorCode = (error: unknown): string | undefined => (error instanceof PgTideError ? error.code : undefined);

/** Ids of the table's changes in the log, in log (id) order. */
async function logIds(db: TestDatabase, table: string): Promise<string[]> {
  const { rows } = await db.pool.query<{ id: string }>(`SELECT id::text AS id FROM pgtide.log WHERE relid = $1::regclass ORDER BY log.id`, [table]);
  return rows.map((row) => row.id);
}

/** The consumer's row as the database has it right now (undefined once dropped). */
async function storedConsumer(
  db: TestDatabase,
  name: string,
): Promise<{ era: number; base: string; upto: string | null; after_id: string | null; expired: boolean } | undefined> {
  const { rows } = await db.pool.query<{ era: number; base: string; upto: string | null; after_id: string | null; expired: boolean }>(
    `SELECT era, base::text AS base, upto::text AS upto, after_id::text AS after_id, expired_at IS NOT NULL AS expired
       FROM pgtide.consumers WHERE name = $1`,
    [name],
  );
  return rows[0];
}

async function lagOf(tide: Tide, name: string): Promise<number | undefined> {
  return (await tide.consumers()).find((consumer) => consumer.name === name)?.lagChanges;
}

const ids = (changes: readonly Change[]): string[] => changes.map((change) => change.id);
const keys = (changes: readonly Change[]): number[] => changes.map((change) => change.key['id'] as number);
const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from + 1) }, (_, index) => from + index);

describe('a running stream of an expired consumer', () => {
  it("errors with CONSUMER_EXPIRED as soon as its own Tide's prune expires it", async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE own_expiry (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { maxLag: 50 });
      await tide.watch('own_expiry');
      await db.pool.query(`INSERT INTO own_expiry SELECT generate_series(1, 200)`);
      const options: ChangesOptions = { consumer: 'idle-hands', from: 'beginning', maxInFlight: 10 };
      // Acknowledges nothing: the stream holds 10 changes and waits for room.
      const run = record(tide.events$('own_expiry', options), (changes) => changes);
      await eventually(() => run.changes.length === 10, '10 delivered (the in-flight window)');
      await sleep(50);
      expect(run.changes).toHaveLength(10);
      expect(run.error).toBeUndefined();

      const pruneCalledAt = Date.now();
      const result = await tide.prune();
      const prunedAt = Date.now();
      expect(result.expired).toEqual(['idle-hands']);
      await eventually(() => run.error !== undefined, 'the stream errored', 100);
      console.log(
        `own prune: prune() took ${prunedAt - pruneCalledAt} ms; the stream errored ${run.erroredAt! - pruneCalledAt} ms after it was called ` +
          `(${run.erroredAt! <= prunedAt ? 'before' : `${run.erroredAt! - prunedAt} ms after`} it resolved)`,
      );
      expect(run.error).toBeInstanceOf(PgTideError);
      expect(errorCode(run.error)).toBe('CONSUMER_EXPIRED');
      expect((run.error as PgTideError).details).toMatchObject({ consumer: 'idle-hands' });
      expect(keys(run.changes)).toEqual(range(1, 10));
      expect((await storedConsumer(db, 'idle-hands'))?.expired).toBe(true);
    });
  });

  it("errors with CONSUMER_EXPIRED within 2 s when another process's prune expires it (NOTIFY), with no change after a gap", async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE other_expiry (id int PRIMARY KEY)`);
      // Saves never happen during the test: what stops the stream is the other Tide's prune.
      const reader = await tideOf(db, { acknowledgeFlushDelay: 60_000 });
      await reader.watch('other_expiry');
      await db.pool.query(`INSERT INTO other_expiry SELECT generate_series(1, 200)`);
      const before = await logIds(db, 'other_expiry');
      expect(before).toHaveLength(200);
      // Another process: expires anyone more than 50 behind, and deletes what no live consumer holds.
      const other = await tideOf(db, { maxLag: 50, retention: 0 });

      const options: ChangesOptions = { consumer: 'far-behind', from: 'beginning', maxInFlight: 10 };
      const run = record(reader.events$('other_expiry', options), slowly(2));
      await eventually(() => run.changes.length >= 30, '30 delivered');

      const result = await other.prune();
      const prunedAt = Date.now();
      expect(result.expired).toEqual(['far-behind']);
      expect(result.deleted).toBe(200);
      await eventually(() => run.error !== undefined, 'the stream errored', 2_000);
      console.log(
        `other process's prune: stream errored ${run.erroredAt! - prunedAt} ms after prune() resolved, ` +
          `having delivered ${run.changes.length} changes; caught-up ${run.caughtUpAfter === undefined ? 'never' : `after ${run.caughtUpAfter}`}`,
      );
      expect(errorCode(run.error)).toBe('CONSUMER_EXPIRED');
      // A prefix of the log as it was: nothing after a gap.
      expect(ids(run.changes)).toEqual(before.slice(0, run.changes.length));
      expect(run.changes.length).toBeLessThan(200);
      // And nothing more comes later.
      const delivered = run.changes.length;
      await db.pool.query(`INSERT INTO other_expiry SELECT generate_series(201, 210)`);
      await sleep(200);
      expect(run.changes).toHaveLength(delivered);
    });
  });
});

describe('saving the position of a consumer that is no longer live', () => {
  it('is refused once it expired (CONSUMER_EXPIRED, the position stays) and once it was dropped (UNKNOWN_CONSUMER)', async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE refused (id int PRIMARY KEY); CREATE TABLE dropped (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { acknowledgeFlushDelay: 20 });
      /** A consumer that has acknowledged 1..5 (saved), and holds 6 delivered but not yet acknowledged. */
      const holdingSix = async (table: string, consumer: string) => {
        const run = record(tide.events$(table, { consumer }), (changes) => changes);
        await eventually(() => run.caughtUpAfter !== undefined, 'caught up');
        await db.pool.query(`INSERT INTO ${table} SELECT generate_series(1, 5)`);
        await eventually(() => run.changes.length === 5, '5 delivered');
        for (const change of run.changes) markProcessed(change);
        await eventually(async () => (await lagOf(tide, consumer)) === 0, 'position saved after 5');
        await db.pool.query(`INSERT INTO ${table} VALUES (6)`);
        await eventually(() => run.changes.length === 6, 'change 6 delivered');
        return run;
      };

      // Expired behind the stream's back: plain SQL, no NOTIFY, so only the refused save can stop it.
      const expiring = await holdingSix('refused', 'expiring');
      await db.pool.query(`UPDATE pgtide.consumers SET expired_at = now() WHERE name = 'expiring'`);
      const saved = await storedConsumer(db, 'expiring');
      expect(saved?.expired).toBe(true);
      await sleep(50);
      expect(expiring.error).toBeUndefined();
      markProcessed(expiring.changes[5]!); // the save of position 6 is due 20 ms later
      await eventually(() => expiring.error !== undefined, 'the stream errored', 3_000);
      expect(errorCode(expiring.error)).toBe('CONSUMER_EXPIRED');
      expect(keys(expiring.changes)).toEqual(range(1, 6));
      await sleep(100); // any save still on its way would land now
      expect(await storedConsumer(db, 'expiring')).toEqual(saved);
      expect(await lagOf(tide, 'expiring')).toBe(1);

      // Dropped while it runs: the next save finds no consumer, and does not bring it back.
      const dropping = await holdingSix('dropped', 'dropping');
      expect(await tide.dropConsumer('dropping')).toBe(true);
      await sleep(50);
      expect(dropping.error).toBeUndefined();
      markProcessed(dropping.changes[5]!);
      await eventually(() => dropping.error !== undefined, 'the stream errored', 3_000);
      expect(errorCode(dropping.error)).toBe('UNKNOWN_CONSUMER');
      await sleep(100);
      expect(await storedConsumer(db, 'dropping')).toBeUndefined();
    });
  });
});

describe('a save that waits on the prune that expires its consumer', () => {
  it('is refused with CONSUMER_EXPIRED, not UNKNOWN_CONSUMER (the save re-reads the row after the prune committed)', async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE racing (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { acknowledgeFlushDelay: 0 });
      const run = record(tide.events$('racing', { consumer: 'racer' }), (changes) => changes);
      await eventually(() => run.caughtUpAfter !== undefined, 'caught up');
      await db.pool.query(`INSERT INTO racing VALUES (1)`);
      await eventually(() => run.changes.length === 1, 'change 1 delivered');

      // What prune does first: expire the consumer, holding its row until commit (no NOTIFY
      // here, so only the save can stop the stream).
      const pruner = await db.pool.connect();
      try {
        await pruner.query('BEGIN');
        await pruner.query(`UPDATE pgtide.consumers SET expired_at = now() WHERE name = 'racer'`);
        markProcessed(run.changes[0]!); // the save starts, and waits on the row lock
        await eventually(async () => {
          const { rows } = await db.pool.query(
            `SELECT FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%UPDATE%consumers%'`,
          );
          return rows.length > 0;
        }, 'the save waits on the prune');
        await pruner.query('COMMIT');
      } finally {
        pruner.release();
      }
      await eventually(() => run.error !== undefined, 'the stream errored', 3_000);
      expect(errorCode(run.error)).toBe('CONSUMER_EXPIRED');
      expect(await storedConsumer(db, 'racer')).toMatchObject({ expired: true, after_id: null });
    });
  });
});

describe('replay of an expired consumer', () => {
  it('errors with CONSUMER_EXPIRED mid-replay and never skips: what it delivered is a gap-free prefix of the log', async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE backlog (id int PRIMARY KEY)`);
      const reader = await tideOf(db, { pageSize: 500 });
      await reader.watch('backlog');
      // Ten transactions of 500: batch boundaries inside the backlog, too.
      for (let first = 1; first <= 5000; first += 500) {
        await db.pool.query(`INSERT INTO backlog SELECT generate_series($1::int, $1::int + 499)`, [first]);
      }
      const before = await logIds(db, 'backlog');
      expect(before).toHaveLength(5000);
      const other = await tideOf(db, { maxLag: 100, retention: 0 });

      // About 1 ms per change: the replay takes seconds; the other process strikes somewhere in it.
      const options: ChangesOptions = { consumer: 'replayer', from: 'beginning', maxInFlight: 500 };
      const run = record(reader.events$('backlog', options), slowly(0));
      const strikeAt = 500 + Math.floor(Math.random() * 1500);
      await eventually(() => run.changes.length >= strikeAt, `${strikeAt} delivered`);
      const deliveredAtPrune = run.changes.length;
      const result = await other.prune();
      const prunedAt = Date.now();
      expect(result.expired).toEqual(['replayer']);
      expect(result.deleted).toBe(5000);
      expect(await logIds(db, 'backlog')).toEqual([]);

      await eventually(() => run.error !== undefined, 'the stream errored', 2_000);
      console.table([
        {
          'prune after (delivered)': deliveredAtPrune,
          'delivered before error': run.changes.length,
          'error after prune (ms)': run.erroredAt! - prunedAt,
          error: errorCode(run.error),
          'caught-up after': run.caughtUpAfter ?? 'never',
        },
      ]);
      expect(errorCode(run.error)).toBe('CONSUMER_EXPIRED');
      expect(run.changes.length).toBeLessThan(5000);
      expect(ids(run.changes)).toEqual(before.slice(0, run.changes.length));
      expect(keys(run.changes)).toEqual(range(1, run.changes.length));
    });
  });
});

/**
 * What prune does to a consumer more than maxLag behind, with no other live consumer of the
 * table and retention 0 (expire it, delete what it held, in one transaction), minus the
 * NOTIFY: a prune whose notification this Tide did not hear (its LISTEN connection was down
 * when the prune committed, and pg-listen's reconnect is too quick to stage that reliably).
 */
async function pruneUnheard(db: TestDatabase, consumer: string, table: string): Promise<number> {
  const client = await db.pool.connect();
  try {
    await client.query('BEGIN');
    const expired = await client.query(`UPDATE pgtide.consumers SET expired_at = now() WHERE name = $1 AND expired_at IS NULL`, [consumer]);
    expect(expired.rowCount).toBe(1);
    const deleted = await client.query(`DELETE FROM pgtide.log WHERE relid = $1::regclass`, [table]);
    await client.query('COMMIT');
    return deleted.rowCount ?? 0;
  } finally {
    client.release();
  }
}

const shortKeys = (changes: readonly Change[]): string => {
  const all = keys(changes);
  return JSON.stringify(all.length > 14 ? [...all.slice(0, 2), '...', ...all.slice(-12)] : all);
};

describe('a consumer expired by a prune whose NOTIFY its Tide missed', () => {
  it('in replay: the page read that finds it expired ends the stream; it is not "caught up"', async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE unheard (id int PRIMARY KEY)`);
      // Its saves wait 60 s: only the reads can notice the expiry.
      const reader = await tideOf(db, { acknowledgeFlushDelay: 60_000 });
      await reader.watch('unheard');
      await db.pool.query(`INSERT INTO unheard SELECT generate_series(1, 200)`);
      const before = await logIds(db, 'unheard');

      const options: ChangesOptions = { consumer: 'unheard', from: 'beginning', maxInFlight: 10 };
      const run = record(reader.events$('unheard', options), (changes) => changes);
      await eventually(() => run.changes.length === 10, '10 delivered (the in-flight window)');
      expect(await pruneUnheard(db, 'unheard', 'unheard')).toBe(200);

      // The application finishes the 10 it holds; the stream reads on, into the pruned log.
      for (const change of run.changes) markProcessed(change);
      await sleep(100);
      await db.pool.query(`INSERT INTO unheard SELECT generate_series(201, 205)`);
      await eventually(() => run.error !== undefined || run.changes.length > 10, 'the stream errored or delivered more', 3_000);
      await sleep(100);
      console.table([
        {
          where: 'replay',
          'delivered keys': shortKeys(run.changes),
          'caught-up after': run.caughtUpAfter ?? 'never',
          error: run.error === undefined ? 'none' : (errorCode(run.error) ?? String(run.error)),
        },
      ]);
      expect(ids(run.changes)).toEqual(before.slice(0, run.changes.length));
      expect(run.caughtUpAfter).toBeUndefined();
      expect(errorCode(run.error)).toBe('CONSUMER_EXPIRED');
    });
  });

  it('caught up, on the shared live feed: it delivers no change after the gap the prune left', async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE unheard_live (id int PRIMARY KEY)`);
      const reader = await tideOf(db, { acknowledgeFlushDelay: 60_000 });
      await reader.watch('unheard_live');
      // Acknowledges nothing; well inside maxInFlight (1000), so it stays on the table's shared feed.
      const run = record(reader.events$('unheard_live', { consumer: 'unheard-live' }), (changes) => changes);
      await eventually(() => run.caughtUpAfter !== undefined, 'caught up');
      await db.pool.query(`INSERT INTO unheard_live SELECT generate_series(1, 100)`);
      await eventually(() => run.changes.length === 100, '100 delivered live');

      // The reader's pool is busy (every connection checked out), so its feed has not read
      // 101..110 yet when they are pruned with the consumer's expiry; 111..115 come after.
      const max = reader.pool.options.max ?? 10;
      const busy = await Promise.all(Array.from({ length: max }, () => reader.pool.connect()));
      try {
        await db.pool.query(`INSERT INTO unheard_live SELECT generate_series(101, 110)`);
        await sleep(50);
        expect(run.changes).toHaveLength(100);
        expect(await pruneUnheard(db, 'unheard-live', 'unheard_live')).toBe(110);
        await db.pool.query(`INSERT INTO unheard_live SELECT generate_series(111, 115)`);
      } finally {
        for (const client of busy) client.release();
      }
      await eventually(() => run.error !== undefined || run.changes.length > 100, 'the stream errored or delivered more', 3_000);
      await sleep(100);
      console.table([
        {
          where: 'live feed',
          'delivered keys': shortKeys(run.changes),
          error: run.error === undefined ? 'none' : (errorCode(run.error) ?? String(run.error)),
        },
      ]);
      expect(keys(run.changes)).toEqual(range(1, run.changes.length));
      expect(errorCode(run.error)).toBe('CONSUMER_EXPIRED');
    });
  });

  it('a transactions$ consumer: the batch read that finds it expired ends the stream, with nothing after the gap', async () => {
    await withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE unheard_tx (id int PRIMARY KEY)`);
      const reader = await tideOf(db, { acknowledgeFlushDelay: 60_000 });
      await reader.watch('unheard_tx');
      const delivered: string[] = [];
      let failure: unknown;
      const subscription = reader.transactions$(['unheard_tx'], { consumer: 'unheard_tx', from: 'beginning' }).subscribe({
        next: (transaction) => delivered.push(...transaction.changes.map((change) => String(change.key['id']))),
        error: (error: unknown) => (failure = error),
      });
      await db.pool.query(`INSERT INTO unheard_tx VALUES (1)`);
      await eventually(() => delivered.length === 1, 'the first transaction');
      expect(await pruneUnheard(db, 'unheard_tx', 'unheard_tx')).toBe(1);
      await db.pool.query(`INSERT INTO unheard_tx VALUES (2)`);
      await eventually(() => failure !== undefined || delivered.length > 1, 'the stream errored or delivered more', 3_000);
      await sleep(100);
      subscription.unsubscribe();
      expect(delivered).toEqual(['1']);
      expect(errorCode(failure)).toBe('CONSUMER_EXPIRED');
    });
  });
});

interface SlowRun {
  readonly scenario: string;
  readonly maxLag: number;
  readonly outcome: 'a: live, got everything' | 'b: expired, stopped' | 'neither';
  readonly produced: number;
  readonly delivered: number;
  readonly duplicates: number;
  readonly lost: number;
  readonly outOfOrder: number;
  readonly prunes: number;
  readonly deleted: number;
  /** Checks after a prune that found a change deleted that the live consumer had not acknowledged. */
  readonly unackedDeleted: number;
  readonly maxLagSeen: number;
  readonly ms: number;
}

/**
 * A slow consumer (about 1 ms per change, one at a time), a writer of `total` inserts in
 * small transactions, and another process pruning every 10 ms with `maxLag`.
 */
async function slowConsumerUnderPrune(maxLag: number, total: number): Promise<{ run: SlowRun; recording: Recording; expired: boolean }> {
  let outcome: { run: SlowRun; recording: Recording; expired: boolean } | undefined;
  await withDatabase(async (db) => {
    const startedAt = Date.now();
    await db.pool.query(`CREATE TABLE slow_rows (id int PRIMARY KEY)`);
    const reader = await tideOf(db);
    await reader.watch('slow_rows');
    const pruner = await tideOf(db, { maxLag, retention: 0 });

    let acknowledged = 0; // keys 1..acknowledged have been acknowledged (concatMap keeps order)
    const recording = record(reader.events$('slow_rows', { consumer: 'slowpoke', from: 'beginning' }), (changes) =>
      changes.pipe(
        concatMap((change) => timer(1).pipe(map(() => change))),
        acknowledge(),
        filter((change) => {
          acknowledged = Math.max(acknowledged, change.key['id'] as number);
          return true;
        }),
      ),
    );
    await eventually(() => recording.caughtUpAfter !== undefined, 'caught up on the empty table');

    // The writer: one client, transactions of 1 to 5 inserts, keys 1..total in commit order.
    let produced = 0;
    let stopWriting = false;
    const writer = new pg.Client({ connectionString: db.url });
    await writer.connect();
    const firstLogId = async (): Promise<bigint> => {
      const { rows } = await db.pool.query<{ id: string }>(`SELECT min(id)::text AS id FROM pgtide.log WHERE relid = 'slow_rows'::regclass`);
      return BigInt(rows[0]!.id);
    };
    await writer.query(`INSERT INTO slow_rows VALUES (1)`);
    produced = 1;
    // The log ids of this (only) table's changes are consecutive: key k is change firstId + k - 1.
    const firstId = await firstLogId();
    const writing = (async () => {
      while (produced < total && !stopWriting) {
        const size = Math.min(total - produced, 1 + Math.floor(Math.random() * 5));
        await writer.query(`INSERT INTO slow_rows SELECT generate_series($1::int, $2::int)`, [produced + 1, produced + size]);
        produced += size;
        await sleep(2); // a little faster than the consumer: its lag grows through the run
      }
    })();

    // The other process: prune every 10 ms; after each, check the log still holds every change
    // the consumer has not acknowledged (while it is live).
    let pruning = true;
    let prunes = 0;
    let deleted = 0;
    let unackedDeleted = 0;
    let maxLagSeen = 0;
    const pruneLoop = (async () => {
      while (pruning) {
        const result = await pruner.prune();
        prunes += 1;
        deleted += result.deleted;
        // Taken after the prune: the position it went by was saved at or below `ackedBound`, and
        // every change up to `committed` had committed before the check below reads the log.
        const ackedBound = acknowledged;
        const committed = produced;
        const { rows } = await db.pool.query<{ min_id: string | null; max_id: string | null; count: string; expired: boolean }>(
          `SELECT min(id)::text AS min_id, max(id)::text AS max_id, count(*)::text AS count,
                  (SELECT expired_at IS NOT NULL FROM pgtide.consumers WHERE name = 'slowpoke') AS expired
             FROM pgtide.log WHERE relid = 'slow_rows'::regclass`,
        );
        const state = rows[0]!;
        if (!state.expired && committed > ackedBound) {
          // Keys ackedBound + 1 .. committed must all still be in the log.
          maxLagSeen = Math.max(maxLagSeen, committed - ackedBound);
          const keyOf = (id: string) => Number(BigInt(id) - firstId) + 1;
          const firstKeyLeft = state.min_id === null ? Infinity : keyOf(state.min_id);
          const lastKeyLeft = state.max_id === null ? -Infinity : keyOf(state.max_id);
          const holes = state.min_id === null ? 0 : lastKeyLeft - firstKeyLeft + 1 - Number(state.count);
          if (firstKeyLeft > ackedBound + 1 || lastKeyLeft < committed || holes !== 0) {
            unackedDeleted += 1;
            console.log('unacknowledged change deleted?', { ackedBound, committed, firstKeyLeft, lastKeyLeft, holes });
          }
        }
        await sleep(10);
      }
    })();

    await eventually(
      () => recording.error !== undefined || (produced === total && recording.changes.length >= total),
      'every change delivered, or the stream errored',
      20_000,
    );
    stopWriting = true;
    await writing;
    await sleep(150); // a late duplicate or stray change would show now
    pruning = false;
    await pruneLoop;
    await writer.end();
    recording.subscription.unsubscribe();

    const stored = await storedConsumer(db, 'slowpoke');
    const expired = stored?.expired ?? false;
    const delivered = keys(recording.changes);
    const unique = new Set(delivered);
    let outOfOrder = 0;
    for (let index = 1; index < delivered.length; index += 1) if (delivered[index]! <= delivered[index - 1]!) outOfOrder += 1;
    const everything = delivered.length === produced && delivered.every((key, index) => key === index + 1);
    const prefix = delivered.every((key, index) => key === index + 1);
    const run: SlowRun = {
      scenario: `slow consumer, prune every 10 ms`,
      maxLag,
      outcome:
        !expired && recording.error === undefined && everything
          ? 'a: live, got everything'
          : expired && errorCode(recording.error) === 'CONSUMER_EXPIRED' && prefix
            ? 'b: expired, stopped'
            : 'neither',
      produced,
      delivered: delivered.length,
      duplicates: delivered.length - unique.size,
      lost: range(1, produced).filter((key) => !unique.has(key)).length,
      outOfOrder,
      prunes,
      deleted,
      unackedDeleted,
      maxLagSeen,
      ms: Date.now() - startedAt,
    };
    // Every delivered change is the one its key was written as (the key/log-id mapping holds).
    for (const change of recording.changes) expect(BigInt(change.id)).toBe(firstId + BigInt((change.key['id'] as number) - 1));
    outcome = { run, recording, expired };
  });
  return outcome!;
}

describe('prune while a slow consumer lags', () => {
  it('never deletes what a live consumer has not acknowledged: it gets everything in order, or is expired and stops without a gap', async () => {
    const near = await slowConsumerUnderPrune(300, 2000);
    const high = await slowConsumerUnderPrune(10_000, 2000);
    console.table([near.run, high.run]);
    if (near.recording.error !== undefined && errorCode(near.recording.error) !== 'CONSUMER_EXPIRED') {
      console.log('maxLag 300: stream error', near.recording.error);
    }

    for (const { run } of [near, high]) {
      expect(run.unackedDeleted).toBe(0);
      expect(run.duplicates).toBe(0);
      expect(run.outOfOrder).toBe(0);
      expect(run.prunes).toBeGreaterThan(20);
    }
    // maxLag near the typical lag: either outcome, but one of the two, exactly.
    expect(['a: live, got everything', 'b: expired, stopped']).toContain(near.run.outcome);
    if (near.run.outcome === 'a: live, got everything') expect(near.run.lost).toBe(0);
    // maxLag far above it: never expired, everything delivered, while prune deleted behind it.
    expect(high.run.outcome).toBe('a: live, got everything');
    expect(high.run.lost).toBe(0);
    expect(high.run.produced).toBe(2000);
    expect(high.run.deleted).toBeGreaterThan(0);
  });
});
