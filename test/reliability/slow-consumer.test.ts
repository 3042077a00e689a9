import pg from 'pg';
import { concatMap, filter, map, tap, timer } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import type { Change, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';
import { DeliveryChecker, report } from './checker.js';

const table = 'slow_rows';
const maxInFlight = 100;
let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, seq int NOT NULL, pad text)`);
  tide = await db.tide({ pruneInterval: 0 });
  await tide.watch(table);
});
afterAll(() => db.drop());

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

describe('a handler slower than the writers', () => {
  it('never holds more than maxInFlight unacknowledged changes, keeps memory bounded, and catches up', async () => {
    const checker = new DeliveryChecker(`slow consumer (maxInFlight ${maxInFlight})`);
    let delivered = 0;
    let acknowledged = 0;
    let maxUnacknowledged = 0;
    let caughtUp = false;
    let error: unknown;
    global.gc?.();
    const baselineHeap = process.memoryUsage().heapUsed;
    let peakHeap = baselineHeap;
    const sampler = setInterval(() => (peakHeap = Math.max(peakHeap, process.memoryUsage().heapUsed)), 10);

    const subscription = tide
      .events$(table, { consumer: 'slowpoke', maxInFlight })
      .pipe(
        tap((event) => {
          if (event.kind === 'caught-up') caughtUp = true;
        }),
        filter((event) => event.kind === 'change'),
        map((event) => event.change),
        tap((change) => {
          delivered += 1;
          maxUnacknowledged = Math.max(maxUnacknowledged, delivered - acknowledged);
          checker.deliver(change.key['id'] as number, change.new!['seq'] as number);
        }),
        // The slow part: a few ms of "work" per change, one change at a time.
        concatMap((change: Change) => timer(2).pipe(map(() => change))),
        tap(() => (acknowledged += 1)),
        acknowledge(),
      )
      .subscribe({ error: (caught: unknown) => (error = caught) });
    // A fast follower keeps the table's shared reader running, so the slow consumer, each
    // time it leaves the reader and reads at its own pace, rejoins a reader that is ahead.
    const fast = new DeliveryChecker('fast follower, same table');
    let fastCaughtUp = false;
    const follower = tide.events$(table).subscribe((event) => {
      if (event.kind === 'caught-up') fastCaughtUp = true;
      else if (event.kind === 'change') fast.deliver(event.change.key['id'] as number, event.change.new!['seq'] as number);
    });
    await eventually(() => caughtUp && fastCaughtUp, 'both caught up');

    // Writers: batches of 50 inserts, each followed by an update of about half of them
    // (counting `seq` up), 2 kB rows: about 3000 changes in well under a second.
    const startedAt = Date.now();
    const writers = Array.from({ length: 4 }, async (_, writer) => {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      for (let batch = 0; batch < 10; batch += 1) {
        const first = writer * 100_000 + batch * 50;
        const { rows } = await client.query(
          `INSERT INTO ${table} SELECT g, 0, repeat('x', 2000) FROM generate_series($1::int, $1::int + 49) g RETURNING id`,
          [first],
        );
        const ids = (rows as Array<{ id: number }>).map((row) => row.id);
        for (const id of ids) {
          checker.produce(id, 0);
          fast.produce(id, 0);
        }
        const some = ids.filter(() => Math.random() < 0.5);
        const updated = await client.query(`UPDATE ${table} SET seq = seq + 1 WHERE id = ANY($1) RETURNING id, seq`, [some]);
        for (const row of updated.rows as Array<{ id: number; seq: number }>) {
          checker.produce(row.id, row.seq);
          fast.produce(row.id, row.seq);
        }
      }
      await client.end();
    });
    await Promise.all(writers);
    const writtenInMs = Date.now() - startedAt;
    const produced = checker.counts().produced;
    const behindWhenWritersStopped = produced - delivered;

    await eventually(() => checker.complete() || error !== undefined, 'the slow consumer catches up', 20_000);
    const caughtUpInMs = Date.now() - startedAt;
    await eventually(() => acknowledged === delivered, 'every delivered change acknowledged');
    await sleep(100);
    clearInterval(sampler);
    peakHeap = Math.max(peakHeap, process.memoryUsage().heapUsed);

    const counts = report(checker);
    expect(report(fast)).toMatchObject({ lost: 0, outOfOrder: 0, duplicates: 0 });
    console.log('slow consumer:', {
      produced,
      writtenInMs,
      behindWhenWritersStopped,
      caughtUpInMs,
      maxUnacknowledged,
      baselineHeapMB: mb(baselineHeap),
      peakHeapMB: mb(peakHeap),
      peakMinusBaselineMB: mb(peakHeap - baselineHeap),
    });
    expect(error).toBeUndefined();
    expect(checker.problems).toEqual([]);
    expect(counts).toMatchObject({ lost: 0, outOfOrder: 0, duplicates: 0 });
    expect(counts.produced).toBeGreaterThan(2_500);
    // The writers really outran the handler, and the window really filled up ...
    expect(behindWhenWritersStopped).toBeGreaterThan(maxInFlight * 5);
    expect(maxUnacknowledged).toBe(maxInFlight);
    // ... yet it never held more than maxInFlight changes, and memory stayed small.
    expect(maxUnacknowledged).toBeLessThanOrEqual(maxInFlight);
    expect(peakHeap - baselineHeap).toBeLessThan(64 * 2 ** 20);
    await eventually(
      async () => (await tide.consumers()).find((consumer) => consumer.name === 'slowpoke')?.lagChanges === 0,
      'position saved at the end',
    );
    subscription.unsubscribe();
    follower.unsubscribe();
  });
});
