import pg from 'pg';
import { concatMap, filter, identity, map, tap, timer, type MonoTypeOperatorFunction, type Observable } from 'rxjs';
import { describe, expect, it, vi } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { filterRows } from '../../operators/filterRows.js';
import { ofOperation } from '../../operators/ofOperation.js';
import {
  PgTideError,
  type Change,
  type ChangesOptions,
  type ConsumerStalledWarning,
  type Logger,
  type StreamEvent,
  type Tide,
  type TideWarning,
} from '../../src/index.js';
import { createTestDatabase, eventually, quietLogger, type TestDatabase } from '../helpers.js';

/** Runs `body` on a database of its own, dropped afterwards whatever happens. */
async function withDatabase(body: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await createTestDatabase();
  try {
    await body(db);
  } finally {
    await db.drop();
  }
}

/** A Tide that never prunes by itself: each test decides when pruning happens. */
const tideOf = (db: TestDatabase, options: Parameters<TestDatabase['tide']>[0] = {}) =>
  db.tide({ pruneInterval: 0, ...options });

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const keys = (changes: readonly Change[]) => changes.map((change) => change.key['id'] as number);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, index) => from + index);

async function consumerNamed(tide: Tide, name: string) {
  return (await tide.consumers()).find((consumer) => consumer.name === name);
}

async function lagOf(tide: Tide, name: string): Promise<number | undefined> {
  return (await consumerNamed(tide, name))?.lagChanges;
}

/** A logger that records warnings (and prints errors, like quietLogger). */
function recordingLogger(): { logger: Logger; warned: Array<{ message: string; meta: Record<string, unknown> | undefined }> } {
  const warned: Array<{ message: string; meta: Record<string, unknown> | undefined }> = [];
  return {
    warned,
    logger: {
      debug: () => undefined,
      info: () => undefined,
      warn: (message, meta) => {
        warned.push({ message, meta });
      },
      error: quietLogger.error,
    },
  };
}

/** A subscription to a stream of events, recording its changes (after `pipeline`) and caught-up. */
interface Consumed {
  readonly changes: Change[];
  readonly state: { caughtUp: boolean; error: unknown; completed: boolean };
  unsubscribe(): void;
}

function consume(events: Observable<StreamEvent>, pipeline: MonoTypeOperatorFunction<Change> = identity): Consumed {
  const changes: Change[] = [];
  const state: Consumed['state'] = { caughtUp: false, error: undefined, completed: false };
  const subscription = events
    .pipe(
      tap((event) => {
        if (event.kind === 'caught-up') state.caughtUp = true;
      }),
      filter((event): event is Extract<StreamEvent, { kind: 'change' }> => event.kind === 'change'),
      map((event) => event.change),
      pipeline,
    )
    .subscribe({
      next: (change) => changes.push(change),
      error: (error: unknown) => (state.error = error),
      complete: () => (state.completed = true),
    });
  return { changes, state, unsubscribe: () => subscription.unsubscribe() };
}

async function caughtUp(consumed: Consumed, what: string): Promise<void> {
  await eventually(() => {
    if (consumed.state.error !== undefined) throw consumed.state.error;
    return consumed.state.caughtUp;
  }, `${what} caught up`);
}

const isStall = (warning: TideWarning): warning is ConsumerStalledWarning => warning.kind === 'consumer-stalled';

describe("each stream's acknowledgements are its own", () => {
  it('a fast consumer, a consumer that acknowledges nothing and a plain stream share one table without touching each other', () =>
    withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE items (id int PRIMARY KEY, note text)`);
      const first = await tideOf(db);
      await first.watch('items');

      const fast = consume(
        first.events$('items', { consumer: 'fast', from: 'beginning' }),
        (changes) => changes.pipe(concatMap((change) => timer(5).pipe(map(() => change))), acknowledge()),
      );
      const never = consume(first.events$('items', { consumer: 'never', from: 'beginning' }));
      // A plain stream whose ofOperation marks every insert processed: it must not
      // acknowledge the durable streams' deliveries of the same changes.
      const plainSeen: Change[] = [];
      const plain = consume(first.events$('items'), (changes) =>
        changes.pipe(
          tap((change) => plainSeen.push(change)),
          ofOperation('delete'),
        ),
      );
      await Promise.all([caughtUp(fast, 'fast'), caughtUp(never, 'never'), caughtUp(plain, 'plain')]);

      for (const id of range(1, 10)) await db.pool.query(`INSERT INTO items VALUES ($1, 'n')`, [id]);
      await eventually(
        () => fast.changes.length === 10 && never.changes.length === 10 && plainSeen.length === 10,
        'every stream got the 10 inserts',
      );
      expect(plain.changes).toEqual([]);
      await eventually(async () => (await lagOf(first, 'fast')) === 0, "fast's position saved at the 10th change");
      // Longer than acknowledgeFlushDelay (100 ms): a wrongly moved position would be saved by now.
      await sleep(300);
      expect(await lagOf(first, 'never')).toBe(10);
      await first.terminate();

      const second = await tideOf(db);
      const neverAgain = consume(second.events$('items', { consumer: 'never' }));
      const fastAgain = consume(second.events$('items', { consumer: 'fast' }), (changes) => changes.pipe(acknowledge()));
      await Promise.all([caughtUp(neverAgain, 'never again'), caughtUp(fastAgain, 'fast again')]);
      expect(keys(neverAgain.changes)).toEqual(range(1, 10));
      expect(fastAgain.changes).toEqual([]);

      await db.pool.query(`INSERT INTO items VALUES (11, 'live')`);
      await eventually(() => fastAgain.changes.length >= 1 && neverAgain.changes.length >= 11, 'the live insert delivered');
      await sleep(200);
      expect(keys(fastAgain.changes)).toEqual([11]);
      expect(keys(neverAgain.changes)).toEqual(range(1, 11));
      await eventually(async () => (await lagOf(second, 'fast')) === 0, 'fast acknowledged the live insert');
      expect(await lagOf(second, 'never')).toBe(11);
    }));
});

describe('copies keep acknowledging', () => {
  /** A consumer acknowledging what `transform` makes of its changes reaches lag 0, and nothing comes again after a crash. */
  async function acknowledgesThrough(db: TestDatabase, transform: MonoTypeOperatorFunction<Change>): Promise<Change[]> {
    await db.pool.query(`CREATE TABLE copied (id int PRIMARY KEY)`);
    const first = await tideOf(db);
    await first.watch('copied');
    await db.pool.query(`INSERT INTO copied SELECT generate_series(1, 20)`);
    const done = consume(first.events$('copied', { consumer: 'copier', from: 'beginning' }), (changes) =>
      changes.pipe(transform, acknowledge()),
    );
    await eventually(() => done.changes.length === 20, 'all 20 processed');
    await eventually(async () => (await lagOf(first, 'copier')) === 0, 'position at the last change');
    await first.terminate();

    const second = await tideOf(db);
    const again = consume(second.events$('copied', { consumer: 'copier' }));
    await caughtUp(again, 'resumed copier');
    expect(again.changes).toEqual([]);
    return done.changes;
  }

  it('a spread copy ({ ...change }) acknowledges the delivery it copies', () =>
    withDatabase(async (db) => {
      const done = await acknowledgesThrough(
        db,
        map((change) => ({ ...change })),
      );
      expect(keys(done)).toEqual(range(1, 20));
    }));

  it('a change rebuilt by map keeping only its id acknowledges the delivery with that id', () =>
    withDatabase(async (db) => {
      const done = await acknowledgesThrough(
        db,
        map((change) => ({ id: change.id, note: 'rebuilt' }) as unknown as Change),
      );
      expect(done.map((change) => (change as unknown as { note: string }).note)).toEqual(Array(20).fill('rebuilt'));
    }));

  it("another copy of pgtide's modules in the process acknowledges this copy's deliveries", () =>
    withDatabase(async (db) => {
      vi.resetModules();
      const copyA = await import('../../src/index.js');
      vi.resetModules();
      const copyB = await import('../../src/index.js');
      const operatorsB = await import('../../operators/acknowledge.js');
      expect(copyA).not.toBe(copyB);
      expect(copyA.PgTideError).not.toBe(copyB.PgTideError);
      expect(copyA.acknowledge).not.toBe(copyB.acknowledge);
      expect(operatorsB.acknowledge).toBe(copyB.acknowledge);
      expect(copyA.PgTideError).not.toBe(PgTideError);

      await db.pool.query(`CREATE TABLE shared (id int PRIMARY KEY)`);
      const tide = await copyA.connect({ connectionString: db.url, logger: quietLogger, pruneInterval: 0 });
      try {
        await tide.watch('shared');
        await db.pool.query(`INSERT INTO shared SELECT generate_series(1, 20)`);
        // The stream's own objects, acknowledged by B's operator.
        const own = consume(tide.events$('shared', { consumer: 'a-own', from: 'beginning' }), (changes) =>
          changes.pipe(copyB.acknowledge()),
        );
        await eventually(() => own.changes.length === 20, 'a-own processed all');
        await eventually(async () => (await lagOf(tide, 'a-own')) === 0, "B's acknowledge moved a-own to the end");

        // Spread copies (matched by id in the registry every copy shares), acknowledged by B.
        const copies = consume(tide.events$('shared', { consumer: 'a-copies', from: 'beginning' }), (changes) =>
          changes.pipe(
            map((change) => ({ ...change })),
            operatorsB.acknowledge(),
          ),
        );
        await eventually(() => copies.changes.length === 20, 'a-copies processed all');
        await eventually(async () => (await lagOf(tide, 'a-copies')) === 0, "B's acknowledge moved a-copies to the end");
      } finally {
        await tide.close();
      }
    }));

  it('a change rebuilt from its id alone, in flight in two consumer streams, acknowledges neither and warns', () =>
    withDatabase(async (db) => {
      const { logger, warned } = recordingLogger();
      await db.pool.query(`CREATE TABLE twice (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { logger });
      await tide.watch('twice');
      await db.pool.query(`INSERT INTO twice SELECT generate_series(1, 10)`);

      // Holds all 10 in flight, acknowledging nothing.
      const holder = consume(tide.events$('twice', { consumer: 'holder', from: 'beginning' }));
      await eventually(() => holder.changes.length === 10, 'holder has all 10 in flight');
      const rebuilder = consume(tide.events$('twice', { consumer: 'rebuilder', from: 'beginning' }), (changes) =>
        changes.pipe(
          map((change) => ({ id: change.id, note: 'rebuilt' }) as unknown as Change),
          acknowledge(),
        ),
      );
      await eventually(() => rebuilder.changes.length === 10, 'rebuilder processed all 10');
      // Several flush delays: a moved position would have been saved by now.
      await sleep(300);
      expect(await lagOf(tide, 'holder')).toBe(10);
      expect(await lagOf(tide, 'rebuilder')).toBe(10);
      // Even the final save on unsubscribe finds nothing processed.
      holder.unsubscribe();
      await sleep(300);
      expect(await lagOf(tide, 'holder')).toBe(10);

      const ambiguity = warned.filter((entry) => entry.message.includes('acknowledged by id alone'));
      expect(ambiguity.length).toBeGreaterThanOrEqual(1);
      expect(ambiguity[0]!.meta).toMatchObject({ changeId: rebuilder.changes[0]!.id, streams: 2 });
    }));
});

describe('no silent stall', () => {
  it('reports a consumer whose position waits behind a change a plain filter dropped', () =>
    withDatabase(async (db) => {
      const { logger, warned } = recordingLogger();
      await db.pool.query(`CREATE TABLE stalls (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { stallTimeout: 300, logger });
      const warnings: TideWarning[] = [];
      tide.warnings$.subscribe((warning) => warnings.push(warning));
      await tide.watch('stalls');
      await db.pool.query(`INSERT INTO stalls SELECT generate_series(1, 10)`);

      const seen: Change[] = [];
      const dropper = consume(tide.events$('stalls', { consumer: 'dropper', from: 'beginning' }), (changes) =>
        changes.pipe(
          tap((change) => seen.push(change)),
          filter((change) => change.key['id'] !== 4),
          acknowledge(),
        ),
      );
      await eventually(() => seen.length === 10, 'all 10 delivered');
      expect(keys(dropper.changes)).toEqual([1, 2, 3, 5, 6, 7, 8, 9, 10]);
      const dropped = seen.find((change) => change.key['id'] === 4)!;

      await eventually(() => warnings.some(isStall), 'a consumer-stalled warning', 5000);
      const stall = warnings.find(isStall)!;
      expect(stall).toMatchObject({ kind: 'consumer-stalled', consumer: 'dropper', waitingFor: dropped.id });
      expect(stall.behind).toBeGreaterThanOrEqual(1);
      expect(stall.processedBehind).toBeGreaterThanOrEqual(1);
      expect(stall.processedBehind).toBeLessThanOrEqual(stall.behind);
      expect(stall.since).toBeInstanceOf(Date);
      expect(stall.message).toContain('markProcessed');
      expect(stall.message).toContain('filterRows');
      expect(warned.some((entry) => entry.message.includes(stall.message))).toBe(true);
      // The position stands at row 3: rows 4..10 are not acknowledged.
      await eventually(async () => (await lagOf(tide, 'dropper')) === 7, 'position saved at row 3');
      // One report per stall.
      await sleep(400);
      expect(warnings.filter(isStall)).toHaveLength(1);
    }));

  it.each(['live', 'replay'] as const)(
    'counts in behind/processedBehind only the changes delivered after the one it waits for (%s)',
    (mode) =>
      withDatabase(async (db) => {
        await db.pool.query(`CREATE TABLE counted (id int PRIMARY KEY)`);
        const tide = await tideOf(db, { stallTimeout: 300 });
        const warnings: TideWarning[] = [];
        tide.warnings$.subscribe((warning) => warnings.push(warning));
        await tide.watch('counted');
        const seen: Change[] = [];
        // replay: all 10 are a backlog read in one page; live: each insert comes through the feed.
        if (mode === 'replay') await db.pool.query(`INSERT INTO counted SELECT generate_series(1, 10)`);
        const dropper = consume(tide.events$('counted', { consumer: 'dropper', from: 'beginning' }), (changes) =>
          changes.pipe(
            tap((change) => seen.push(change)),
            filter((change) => change.key['id'] !== 4),
            acknowledge(),
          ),
        );
        if (mode !== 'replay') {
          await caughtUp(dropper, 'dropper');
          for (const id of range(1, 10)) await db.pool.query(`INSERT INTO counted VALUES ($1)`, [id]);
        }
        await eventually(() => seen.length === 10, 'all 10 delivered');
        await eventually(() => warnings.some(isStall), 'a consumer-stalled warning', 5000);
        const stall = warnings.find(isStall)!;
        // Rows 5..10 were delivered after row 4 and all of them were processed.
        expect(stall.behind).toBe(6);
        expect(stall.processedBehind).toBe(6);
        expect(stall.message).toContain('6 of the 6 changes delivered after it were processed');
      }),
  );

  it('reports a consumer whose in-flight window is full because nothing is acknowledged', () =>
    withDatabase(async (db) => {
      const { logger, warned } = recordingLogger();
      await db.pool.query(`CREATE TABLE windows (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { stallTimeout: 300, logger });
      const warnings: TideWarning[] = [];
      tide.warnings$.subscribe((warning) => warnings.push(warning));
      await tide.watch('windows');
      const idle = consume(tide.events$('windows', { consumer: 'idle', maxInFlight: 5 }));
      await caughtUp(idle, 'idle');
      for (const id of range(1, 20)) await db.pool.query(`INSERT INTO windows VALUES ($1)`, [id]);

      await eventually(() => warnings.some(isStall), 'a consumer-stalled warning (window full)', 5000);
      const stall = warnings.find(isStall)!;
      expect(keys(idle.changes)).toEqual(range(1, 5));
      expect(stall).toMatchObject({ kind: 'consumer-stalled', consumer: 'idle', waitingFor: idle.changes[0]!.id });
      expect(stall.behind).toBe(4);
      expect(stall.processedBehind).toBe(0);
      expect(stall.message).toContain('maxInFlight');
      expect(warned.some((entry) => entry.message.includes(stall.message))).toBe(true);
    }));

  it('does not report a consumer whose filterRows drops changes: its position reaches the end', () =>
    withDatabase(async (db) => {
      const { logger, warned } = recordingLogger();
      await db.pool.query(`CREATE TABLE kept (id int PRIMARY KEY)`);
      const tide = await tideOf(db, { stallTimeout: 300, logger });
      const warnings: TideWarning[] = [];
      tide.warnings$.subscribe((warning) => warnings.push(warning));
      await tide.watch('kept');
      await db.pool.query(`INSERT INTO kept SELECT generate_series(1, 10)`);

      const kept = consume(tide.events$('kept', { consumer: 'kept', from: 'beginning' }), (changes) =>
        changes.pipe(
          filterRows((row) => row['id'] !== 4),
          acknowledge(),
        ),
      );
      await eventually(() => kept.changes.length === 9, '9 kept');
      await eventually(async () => (await lagOf(tide, 'kept')) === 0, 'position at the end');
      await sleep(1000);
      expect(warnings).toEqual([]);
      expect(warned).toEqual([]);
      expect(keys(kept.changes)).toEqual([1, 2, 3, 5, 6, 7, 8, 9, 10]);
    }));
});

describe('filtered consumers advance', () => {
  /** 200 changes to rows other than `row` (column w) and, in their middle, one that `special` makes, in separate transactions. */
  async function writeMostlyElsewhere(db: TestDatabase, table: string, special: string): Promise<void> {
    const others = [1, 2, 3, 4, 5, 6, 8, 9, 10];
    const client = await db.pool.connect();
    try {
      for (let index = 0; index < 200; index += 1) {
        if (index === 100) await client.query(special);
        await client.query(`UPDATE ${table} SET w = w + 1 WHERE id = $1`, [others[index % others.length]]);
      }
    } finally {
      client.release();
    }
  }

  async function logCount(db: TestDatabase, table: string): Promise<number> {
    const { rows } = await db.pool.query<{ count: string }>(`SELECT count(*) FROM pgtide.log WHERE relid = $1::regclass`, [table]);
    return Number(rows[0]!.count);
  }

  async function provesAdvance(db: TestDatabase, table: string, options: ChangesOptions, special: string): Promise<void> {
    // The rows exist before capture: the log holds only the updates below.
    await db.pool.query(
      `CREATE TABLE ${table} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, w int NOT NULL DEFAULT 0);
       INSERT INTO ${table} (id) SELECT generate_series(1, 10)`,
    );
    const tide = await tideOf(db, { maxLag: 50 });
    const warnings: TideWarning[] = [];
    tide.warnings$.subscribe((warning) => warnings.push(warning));
    await tide.watch(table);

    // Live: caught up first, then the writes.
    const live = consume(tide.events$(table, { ...options, consumer: 'live' }), (changes) => changes.pipe(acknowledge()));
    await caughtUp(live, 'live');
    await writeMostlyElsewhere(db, table, special);
    expect(await logCount(db, table)).toBe(201);
    await eventually(() => live.changes.length === 1, 'live got its one change');
    await eventually(async () => (await lagOf(tide, 'live')) === 0, 'live at the end of the log');

    // Replay: a new consumer over the existing backlog.
    const replay = consume(tide.events$(table, { ...options, consumer: 'replay', from: 'beginning' }), (changes) =>
      changes.pipe(acknowledge()),
    );
    await eventually(() => replay.changes.length === 1, 'replay got its one change');
    await eventually(async () => (await lagOf(tide, 'replay')) === 0, 'replay at the end of the log');
    expect(replay.changes[0]!.id).toBe(live.changes[0]!.id);

    const result = await tide.prune();
    expect(result.expired).toEqual([]);
    expect(result.deleted).toBe(201);
    const listed = await tide.consumers();
    for (const name of ['live', 'replay']) {
      expect(listed.find((consumer) => consumer.name === name)).toMatchObject({ lagChanges: 0, expiredAt: null });
    }
    expect(warnings.filter((warning) => warning.kind === 'consumer-expired')).toEqual([]);
    expect(live.state.error).toBeUndefined();
    expect(replay.state.error).toBeUndefined();
  }

  it('a rowId consumer moves past the changes of other rows, live and in replay, and is not expired by maxLag', () =>
    withDatabase(async (db) => {
      await provesAdvance(db, 'one_row', { rowId: 7 }, `UPDATE one_row SET v = v + 1 WHERE id = 7`);
    }));

  it('a columns consumer moves past updates of other columns, live and in replay, and is not expired by maxLag', () =>
    withDatabase(async (db) => {
      await provesAdvance(db, 'one_column', { columns: ['v'] }, `UPDATE one_column SET v = v + 1 WHERE id = 5`);
    }));
});

describe('from: { after } under the prune lock', () => {
  it('looks for its start only once the prune lock is free, and fails with UNKNOWN_POSITION if prune deleted it', () =>
    withDatabase(async (db) => {
      await db.pool.query(`CREATE TABLE locked (id int PRIMARY KEY)`);
      const tide = await tideOf(db);
      await tide.watch('locked');
      await db.pool.query(`INSERT INTO locked SELECT generate_series(1, 5)`);
      const { rows } = await db.pool.query<{ id: string }>(
        `SELECT id::text FROM pgtide.log WHERE relid = 'locked'::regclass ORDER BY id`,
      );
      expect(rows).toHaveLength(5);
      const after = rows[2]!.id;
      const registered = async () =>
        (await db.pool.query(`SELECT 1 FROM pgtide.consumers WHERE name = 'late'`)).rowCount ?? 0;

      const pruner = new pg.Client({ connectionString: db.url });
      await pruner.connect();
      try {
        await pruner.query('BEGIN');
        await pruner.query(`SELECT pg_advisory_xact_lock(hashtext('pgtide:prune:pgtide'))`);
        const late = consume(tide.events$('locked', { consumer: 'late', from: { after } }));
        await sleep(300);
        expect(await registered()).toBe(0);
        expect(late.state.error).toBeUndefined();
        expect(late.changes).toEqual([]);

        // What a prune would do while holding the lock.
        await pruner.query(`DELETE FROM pgtide.log WHERE id = $1`, [after]);
        await pruner.query('COMMIT');

        await eventually(() => late.state.error !== undefined || late.state.caughtUp, 'the stream failed (or started)');
        expect(late.state.caughtUp).toBe(false);
        expect(late.changes).toEqual([]);
        expect(late.state.error).toBeInstanceOf(PgTideError);
        expect(late.state.error).toMatchObject({ code: 'UNKNOWN_POSITION' });
        expect(await registered()).toBe(0);
      } finally {
        await pruner.query('ROLLBACK').catch(() => undefined);
        await pruner.end();
      }
    }));
});
