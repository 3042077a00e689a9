import { delay, filter, firstValueFrom, mergeMap, of, take, tap, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { markProcessed } from '../../src/delivery.js';
import type { Change, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE jobs (id int PRIMARY KEY, payload text);
    CREATE TABLE other_jobs (id int PRIMARY KEY);`);
});
afterAll(() => db.drop());

/** A Tide that never prunes by itself, so each test decides when pruning happens. */
const tideWith = (options: Parameters<TestDatabase['tide']>[0] = {}) => db.tide({ pruneInterval: 0, ...options });

async function freshTable(name: string, rows: number): Promise<Tide> {
  await db.pool.query(`DROP TABLE IF EXISTS ${name}; CREATE TABLE ${name} (id int PRIMARY KEY, payload text)`);
  const tide = await tideWith();
  await tide.watch(name);
  await db.pool.query(`INSERT INTO ${name} SELECT g, 'p' || g FROM generate_series(1, $1) g`, [rows]);
  return tide;
}

async function consumerNamed(tide: Tide, name: string) {
  return (await tide.consumers()).find((consumer) => consumer.name === name);
}

const keys = (changes: Change[]) => changes.map((change) => change.key['id'] as number);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, index) => from + index);

describe('resume after a crash', () => {
  it('delivers exactly the unacknowledged remainder, in order, after the stream dies without a flush', async () => {
    const first = await freshTable('crash_jobs', 1000);
    const seen: Change[] = [];
    first
      .changes$('crash_jobs', { consumer: 'crash', from: 'beginning' })
      .pipe(
        tap((change) => seen.push(change)),
        filter((change) => (change.key['id'] as number) <= 500),
        acknowledge(),
      )
      .subscribe();
    await eventually(() => seen.length === 1000, 'all 1000 delivered');
    const half = seen[499]!.id;
    await eventually(async () => (await consumerNamed(first, 'crash'))?.acknowledgedId === half, 'position saved at 500');
    await first.terminate();

    const second = await tideWith();
    const rest = await firstValueFrom(second.changes$('crash_jobs', { consumer: 'crash' }).pipe(take(500), toArray()));
    expect(keys(rest)).toEqual(range(501, 1000));
    expect((await consumerNamed(second, 'crash'))!.lagChanges).toBe(500);
  });

  it('redelivers acknowledged changes whose position was not saved yet (at-least-once)', async () => {
    const first = await freshTable('unsaved_jobs', 100);
    const slowSaving = await tideWith({ acknowledgeFlushDelay: 60_000 });
    const seen: Change[] = [];
    slowSaving
      .changes$('unsaved_jobs', { consumer: 'unsaved', from: 'beginning' })
      .pipe(tap((change) => seen.push(change)), acknowledge())
      .subscribe();
    await eventually(() => seen.length === 100, 'all delivered');
    await slowSaving.terminate(); // within the flush delay: the acknowledgements are lost
    await first.close();

    const second = await tideWith();
    const again = await firstValueFrom(
      second.events$('unsaved_jobs', { consumer: 'unsaved' }).pipe(
        filter((event) => event.kind === 'caught-up' || (event.kind === 'change' && event.change.key['id'] === 100)),
        take(1),
      ),
    );
    // Nothing was saved, so everything comes again.
    expect((await consumerNamed(second, 'unsaved'))!.lagChanges).toBe(100);
    expect(again.kind).toBe('change');
  });

  it('saves the position on unsubscribe, so a clean resume redelivers nothing', async () => {
    const tide = await freshTable('clean_jobs', 50);
    const seen: Change[] = [];
    const subscription = tide
      .changes$('clean_jobs', { consumer: 'clean', from: 'beginning' })
      .pipe(tap((change) => seen.push(change)), acknowledge())
      .subscribe();
    await eventually(() => seen.length === 50, 'all delivered');
    subscription.unsubscribe();
    await eventually(async () => (await consumerNamed(tide, 'clean'))?.lagChanges === 0, 'position saved');
    const resumed = tide.events$('clean_jobs', { consumer: 'clean' });
    const firstEvent = await firstValueFrom(resumed);
    expect(firstEvent.kind).toBe('caught-up');
  });
});

describe('contiguous acknowledgement', () => {
  it('with mergeMap concurrency and random delays ends at the last change, with no change lost', async () => {
    const tide = await freshTable('parallel_jobs', 300);
    const processed = new Set<number>();
    const done = firstValueFrom(
      tide.changes$('parallel_jobs', { consumer: 'parallel', from: 'beginning' }).pipe(
        mergeMap((change) => of(change).pipe(delay(Math.random() * 5)), 8),
        tap((change) => processed.add(change.key['id'] as number)),
        acknowledge(),
        take(300),
        toArray(),
      ),
    );
    const all = await done;
    expect(processed.size).toBe(300);
    await eventually(async () => (await consumerNamed(tide, 'parallel'))?.lagChanges === 0, 'fully acknowledged');
    const last = all.reduce((max, change) => (BigInt(change.id) > BigInt(max.id) ? change : max));
    expect((await consumerNamed(tide, 'parallel'))!.acknowledgedId).toBe(last.id);
  });

  it('moves the position across changes the stream itself filtered out', async () => {
    const tide = await freshTable('filtered_jobs', 10);
    await db.pool.query(`UPDATE filtered_jobs SET payload = 'changed'`);
    const inserts = await firstValueFrom(
      tide
        .changes$('filtered_jobs', { consumer: 'filtered', from: 'beginning', rowId: 3 })
        .pipe(take(2), acknowledge(), toArray()),
    );
    expect(inserts.map((change) => change.op)).toEqual(['insert', 'update']);
    // 10 inserts then 10 updates: row 3's update is the 13th change; 7 remain after it.
    await eventually(async () => (await consumerNamed(tide, 'filtered'))?.lagChanges === 7, 'position at row 3 update');
  });
});

describe('pruning', () => {
  it('deletes only what every consumer of the table acknowledged', async () => {
    const tide = await freshTable('pruned_jobs', 1000);
    const ackUpTo = async (consumer: string, last: number) => {
      const subscription = tide
        .changes$('pruned_jobs', { consumer, from: 'beginning' })
        .pipe(filter((change) => (change.key['id'] as number) <= last), acknowledge())
        .subscribe();
      await eventually(async () => (await consumerNamed(tide, consumer))?.lagChanges === 1000 - last, `${consumer} at ${last}`);
      subscription.unsubscribe();
    };
    await ackUpTo('slow', 300);
    await ackUpTo('fast', 700);
    const count = async () =>
      Number((await db.pool.query(`SELECT count(*) FROM pgtide.log WHERE relid = 'pruned_jobs'::regclass`)).rows[0].count);

    await tide.prune();
    expect(await count()).toBe(700);
    await tide.prune();
    expect(await count()).toBe(700);
    const listed = await tide.consumers();
    expect(listed.find((consumer) => consumer.name === 'slow')).toMatchObject({ table: 'public.pruned_jobs', lagChanges: 700 });
    expect(listed.find((consumer) => consumer.name === 'fast')!.lagSeconds).toBeGreaterThanOrEqual(0);

    expect(await tide.dropConsumer('slow')).toBe(true);
    expect(await tide.dropConsumer('slow')).toBe(false);
    await tide.prune();
    expect(await count()).toBe(300);
    const rest = await firstValueFrom(tide.changes$('pruned_jobs', { consumer: 'fast' }).pipe(take(300), toArray()));
    expect(keys(rest)).toEqual(range(701, 1000));
  });

  it('never loses a change while consumers acknowledge and prune runs at the same time', async () => {
    const tide = await freshTable('racing_jobs', 2000);
    let pruning = true;
    const pruneLoop = (async () => {
      let deleted = 0;
      while (pruning) deleted += (await tide.prune()).deleted;
      return deleted;
    })();
    const seen: Change[] = [];
    const subscription = tide
      .changes$('racing_jobs', { consumer: 'racer', from: 'beginning', maxInFlight: 100 })
      .pipe(
        mergeMap((change) => of(change).pipe(delay(Math.random() * 2)), 4),
        tap((change) => seen.push(change)),
        acknowledge(),
      )
      .subscribe();
    await eventually(() => seen.length >= 1200, '1200 processed', 20_000);
    subscription.unsubscribe();
    await eventually(async () => (await consumerNamed(tide, 'racer'))!.lagChanges <= 800, 'position saved');
    pruning = false;
    expect(await pruneLoop).toBeGreaterThan(0);

    const resumed = await firstValueFrom(
      tide.changes$('racing_jobs', { consumer: 'racer' }).pipe(take((await consumerNamed(tide, 'racer'))!.lagChanges), toArray()),
    );
    const union = new Set([...keys(seen), ...keys(resumed)]);
    expect(union.size).toBe(2000);
    expect(keys(resumed)).toEqual([...keys(resumed)].sort((a, b) => a - b));
  });

  it('expires a consumer that lags more than maxLag, warns, and refuses to resume it until dropped', async () => {
    await db.pool.query(`DROP TABLE IF EXISTS lagging_jobs; CREATE TABLE lagging_jobs (id int PRIMARY KEY)`);
    // Its own pgtide schema: other tests' consumers lag too, and maxLag applies to all.
    const tide = await tideWith({ maxLag: 10, schema: 'lagging', retention: 0 });
    const warnings: string[] = [];
    tide.warnings$.subscribe((warning) => warnings.push(`${warning.kind}:${warning.consumer}`));
    const subscription = tide.changes$('lagging_jobs', { consumer: 'lagger' }).subscribe();
    await eventually(async () => (await consumerNamed(tide, 'lagger')) !== undefined, 'consumer registered');
    subscription.unsubscribe();
    await db.pool.query(`INSERT INTO lagging_jobs SELECT generate_series(1, 20)`);
    const result = await tide.prune();
    expect(result.expired).toEqual(['lagger']);
    expect(result.deleted).toBe(20);
    expect(Number((await db.pool.query(`SELECT count(*) FROM lagging.log`)).rows[0].count)).toBe(0);
    expect(warnings).toEqual(['consumer-expired:lagger']);
    expect((await consumerNamed(tide, 'lagger'))!.expiredAt).toBeInstanceOf(Date);
    await expect(firstValueFrom(tide.changes$('lagging_jobs', { consumer: 'lagger' }))).rejects.toMatchObject({
      code: 'CONSUMER_EXPIRED',
    });
    await tide.dropConsumer('lagger');
    const fresh = await firstValueFrom(tide.events$('lagging_jobs', { consumer: 'lagger' }));
    expect(fresh.kind).toBe('caught-up');
  });

  it('keeps changes of tables without consumers for the retention period', async () => {
    await db.pool.query(`INSERT INTO other_jobs SELECT generate_series(1, 5)`);
    const keeping = await tideWith();
    await keeping.watch('other_jobs');
    await db.pool.query(`INSERT INTO other_jobs SELECT generate_series(6, 10)`);
    await keeping.prune();
    const count = async () =>
      Number((await db.pool.query(`SELECT count(*) FROM pgtide.log WHERE relid = 'other_jobs'::regclass`)).rows[0].count);
    expect(await count()).toBe(5);
    const forgetting = await tideWith({ retention: 0 });
    await forgetting.prune();
    expect(await count()).toBe(0);
  });
});

describe('backpressure', () => {
  it('holds at most maxInFlight unacknowledged changes, in replay and live, and reads on as they are acknowledged', async () => {
    const tide = await freshTable('bounded_jobs', 200);
    const seen: Change[] = [];
    const events = tide.events$('bounded_jobs', { consumer: 'bounded', from: 'beginning', maxInFlight: 50 });
    let caughtUp = false;
    const subscription = events.subscribe((event) => {
      if (event.kind === 'change') seen.push(event.change);
      else caughtUp = true;
    });
    await eventually(() => seen.length === 50, '50 delivered');
    // Give the stream every chance to overrun: more writes, and several poll rounds.
    await db.pool.query(`INSERT INTO bounded_jobs SELECT g, 'live' FROM generate_series(201, 300) g`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(seen).toHaveLength(50);

    for (const change of seen.slice(0, 20)) markProcessed(change);
    await eventually(() => seen.length === 70, '20 more after 20 acknowledgements');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(seen).toHaveLength(70);

    // Acknowledge as they come: the rest, backlog then live, flows through.
    for (const change of seen) markProcessed(change);
    const pump = setInterval(() => seen.forEach(markProcessed), 5);
    await eventually(() => seen.length === 300 && caughtUp, 'all 300 and caught up');
    clearInterval(pump);
    expect(keys(seen)).toEqual(range(1, 300));
    subscription.unsubscribe();
  });
});

describe('background prune', () => {
  it('prunes by itself every pruneInterval', async () => {
    await db.pool.query(`CREATE TABLE swept (id int PRIMARY KEY)`);
    const sweeping = await db.tide({ pruneInterval: 50, retention: 0 });
    await sweeping.watch('swept');
    await db.pool.query(`INSERT INTO swept SELECT generate_series(1, 30)`);
    await eventually(
      async () =>
        Number((await db.pool.query(`SELECT count(*) FROM pgtide.log WHERE relid = 'swept'::regclass`)).rows[0].count) === 0,
      'log swept by the background prune',
    );
  });
});
