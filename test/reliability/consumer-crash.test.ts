import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';
import { DeliveryChecker, report } from './checker.js';
import { readDeliveries, spawnConsumerChild, type ConsumerChild, type RecordedDelivery } from './child-process.js';

const table = 'crash_rows';
const consumer = 'crash-consumer';
const kills = 4;

let db: TestDatabase;
let tide: Tide;
let dir: string;
const children: ConsumerChild[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, seq int NOT NULL)`);
  tide = await db.tide({ pruneInterval: 0 });
  await tide.watch(table); // capture before the first write, whether or not a child runs
  dir = mkdtempSync(join(tmpdir(), 'pgtide-crash-'));
});
afterAll(async () => {
  for (const child of children) if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
  await Promise.all(children.map((child) => child.exited));
  await db.drop();
  rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function startChild(session: number, acknowledgeFlushDelay?: number): ConsumerChild {
  const child = spawnConsumerChild(db.url, join(dir, `session-${session}.tsv`), table, consumer, acknowledgeFlushDelay);
  children.push(child);
  return child;
}

/** The consumer's saved position, as the database has it right now. */
async function savedPosition(): Promise<Record<string, unknown>> {
  const { rows } = await db.pool.query(
    `SELECT era, base::text, upto::text, after_id::text FROM pgtide.consumers WHERE name = $1`,
    [consumer],
  );
  return rows[0] as Record<string, unknown>;
}

/** Ids of the table's logged changes the saved position covers (`covered`) or not, in id order. */
async function logIds(covered: boolean): Promise<string[]> {
  const { rows } = await db.pool.query(
    `SELECT l.id::text FROM pgtide.log l, pgtide.consumers c
      WHERE c.name = $2 AND l.relid = $1::regclass
        AND pgtide.delivered(c.era, c.base, c.upto, coalesce(c.after_id, 0), pgtide.era_of(l.id), l.txid, l.id) = $3
      ORDER BY l.id`,
    [table, consumer, covered],
  );
  return rows.map((row: { id: string }) => row.id);
}

describe('consumer process killed with SIGKILL at random points', () => {
  it('loses nothing, redelivers exactly the unsaved tail, and a clean resume redelivers nothing', async () => {
    const checker = new DeliveryChecker('consumer SIGKILL x4 + resume');
    /** Change ids in the order they were first delivered (a prefix of the log's delivery order). */
    const firstDelivered: string[] = [];
    /** When each change was last delivered (child clock = our clock). */
    const lastSeen = new Map<string, number>();
    const record = (deliveries: readonly RecordedDelivery[]) => {
      for (const delivery of deliveries) {
        checker.deliver(delivery.key, delivery.seq);
        if (!lastSeen.has(delivery.changeId)) firstDelivered.push(delivery.changeId);
        lastSeen.set(delivery.changeId, delivery.at);
      }
    };

    // Writers: inserts of new rows and per-row updates that count `seq` up.
    let writing = true;
    const committedIds: number[] = [];
    const writers = Array.from({ length: 3 }, async (_, writer) => {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      for (let n = 0; writing; n += 1) {
        if (committedIds.length < 20 || Math.random() < 0.35) {
          const id = writer * 1_000_000 + n;
          await client.query(`INSERT INTO ${table} VALUES ($1, 0)`, [id]);
          checker.produce(id, 0);
          committedIds.push(id);
        } else {
          const id = committedIds[Math.floor(Math.random() * committedIds.length)]!;
          const { rows } = await client.query(`UPDATE ${table} SET seq = seq + 1 WHERE id = $1 RETURNING seq`, [id]);
          checker.produce(id, rows[0].seq as number);
        }
        if (n % 4 === 0) await sleep(1);
      }
      await client.end();
    });

    // Kill the consumer at random points, each time after a random stretch of work.
    /**
     * Per crash: how long the child ran, how many changes it delivered, how many must come
     * again (the unsaved tail), and how long before the kill the oldest change of the tail
     * that this child delivered was delivered (the window of unsaved acknowledgements).
     */
    const tails: Array<{ ranMs: number; delivered: number; redelivered: number; oldestMs: number }> = [];
    let expectedTail: string[] = [];
    let session = 0;
    for (; session < kills; session += 1) {
      const child = startChild(session);
      await child.ready;
      const readyAt = Date.now();
      await sleep(100 + Math.random() * 700);
      const killedAt = Date.now();
      child.process.kill('SIGKILL');
      expect(await child.exited).toMatchObject({ signal: 'SIGKILL' });
      expect(child.errors).toEqual([]);

      const deliveries = readDeliveries(child.file);
      const seenBefore = new Set(firstDelivered);
      // A restarted consumer gets the previous crash's unsaved tail again, and nothing else it had
      // seen before. (Its order may interleave with changes that committed late: batches follow commits.)
      const ids = deliveries.map((delivery) => delivery.changeId);
      const redelivered = ids.filter((id) => seenBefore.has(id));
      expect(redelivered.filter((id) => !expectedTail.includes(id))).toEqual([]);
      if (session > 0) checker.newSession();
      record(deliveries);

      // What the database remembers: everything at or below the saved position was delivered (and
      // written down); everything delivered above it is the unsaved tail, delivered again next time.
      const delivered = new Set(firstDelivered);
      const covered = await logIds(true);
      expect(covered.filter((id) => !delivered.has(id))).toEqual([]);
      const remaining = await logIds(false);
      expectedTail = remaining.filter((id) => delivered.has(id));
      const thisSession = new Set(ids);
      const unsavedHere = expectedTail.filter((id) => thisSession.has(id)).map((id) => lastSeen.get(id)!);
      tails.push({
        ranMs: killedAt - readyAt,
        delivered: deliveries.length,
        redelivered: expectedTail.length,
        oldestMs: unsavedHere.length > 0 ? killedAt - Math.min(...unsavedHere) : 0,
      });
    }
    writing = false;
    await Promise.all(writers);
    await db.pool.query(`INSERT INTO ${table} VALUES (999999998, 0)`); // the last child has work, surely
    checker.produce(999_999_998, 0);
    const savedBeforeLast = await savedPosition();

    // A final consumer runs until every committed write has been delivered. Its flush delay
    // is longer than the test: only the clean stop can save its position.
    checker.newSession();
    const last = startChild(session, 600_000);
    let taken = 0;
    await eventually(
      () => {
        const deliveries = readDeliveries(last.file);
        if (taken === 0 && deliveries.length >= expectedTail.length) {
          // The tail comes first, give or take changes that committed late with lower ids.
          const seen = new Set(firstDelivered);
          const again = deliveries.map((delivery) => delivery.changeId).filter((id) => seen.has(id));
          expect(again.filter((id) => !expectedTail.includes(id))).toEqual([]);
        }
        if (taken === 0 && deliveries.length < expectedTail.length) return false;
        record(deliveries.slice(taken));
        taken = deliveries.length;
        return checker.complete();
      },
      'the last consumer delivers every committed write',
      15_000,
    );
    last.process.send('stop');
    expect(await last.exited).toEqual({ code: 0, signal: null });
    record(readDeliveries(last.file).slice(taken));
    expect(last.errors).toEqual([]);

    const counts = report(checker);
    console.log('redelivered after each crash (unsaved tail):', tails);
    expect(checker.problems).toEqual([]);
    expect(counts).toMatchObject({ lost: 0, outOfOrder: 0 });
    expect(counts.produced).toBeGreaterThan(500);
    // Duplicates come only from the unsaved tails (checked above, session by session), and a
    // tail holds only what was acknowledged within a few flush intervals (100 ms) of the kill.
    expect(counts.duplicates).toBeLessThanOrEqual(tails.reduce((sum, tail) => sum + tail.redelivered, 0));
    for (const tail of tails) expect(tail.oldestMs).toBeLessThan(2_000);
    // The table's final content agrees: one write per insert plus one per update.
    const { rows } = await db.pool.query(`SELECT sum(seq + 1)::int AS writes FROM ${table}`);
    expect(rows[0].writes).toBe(counts.produced);

    // Clean resume: the stopped consumer saved its position on unsubscribe; a new process gets nothing old.
    expect((await tide.consumers()).find((c) => c.name === consumer)?.lagChanges).toBe(0);
    expect(await savedPosition()).not.toEqual(savedBeforeLast);
    const resumed = startChild(session + 1);
    await resumed.caughtUp;
    await db.pool.query(`INSERT INTO ${table} VALUES (999999999, 0)`);
    checker.produce(999_999_999, 0);
    await eventually(() => readDeliveries(resumed.file).length >= 1, 'the resumed consumer delivers the new write');
    await sleep(300);
    resumed.process.send('stop');
    expect(await resumed.exited).toEqual({ code: 0, signal: null });
    expect(readDeliveries(resumed.file).map((delivery) => delivery.key)).toEqual([999_999_999]);
  });
});
