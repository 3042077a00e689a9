import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { markProcessed } from '../../src/delivery.js';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, type TestDatabase } from '../helpers.js';
import { DeliveryChecker, report } from './checker.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

/** A table of rows with a per-row sequence number, watched, plus a Tide following it. */
async function scenarioTable(name: string, options: Parameters<TestDatabase['tide']>[0] = {}): Promise<Tide> {
  await db.pool.query(`CREATE TABLE ${name} (id int PRIMARY KEY, seq int NOT NULL, pad text)`);
  const tide = await db.tide({ pruneInterval: 0, ...options });
  await tide.watch(name);
  return tide;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('LISTEN and pool connections killed while writers run', () => {
  it('reconnects, catches up from the log, and never errors', async () => {
    const tide = await scenarioTable('killed', { pollInterval: 200 });
    const checker = new DeliveryChecker('connections killed');
    const stream = follow(tide, 'killed', { consumer: 'killed' });
    await stream.ready;
    // Process and acknowledge as changes arrive, all along (a consumer that stops
    // acknowledging is paused by maxInFlight, and then has no connection to kill).
    const drain = () => {
      for (const change of stream.changes.splice(0)) {
        checker.deliver(change.key['id'] as number);
        markProcessed(change);
      }
    };
    const draining = setInterval(drain, 5);
    let writing = true;
    const writers = Array.from({ length: 4 }, async (_, writer) => {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      for (let n = 0; writing; n += 1) {
        const id = writer * 100_000 + n;
        await client.query(`INSERT INTO killed VALUES ($1, 0)`, [id]);
        checker.produce(id);
      }
      await client.end();
    });
    const roundsThatKilled: number[] = [];
    for (let round = 0; round < 6; round += 1) {
      await sleep(150);
      const application = round % 2 === 0 ? 'pgtide:listen' : 'pgtide';
      // Kill only once the connection is back: every round must hit a live backend.
      let killed = 0;
      await eventually(async () => {
        const { rows } = await db.pool.query(
          `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = $1`,
          [application],
        );
        killed = rows[0].n as number;
        return killed > 0;
      }, `a ${application} backend to kill`);
      roundsThatKilled.push(round);
    }
    writing = false;
    await Promise.all(writers);
    await eventually(
      () => {
        drain();
        return checker.complete();
      },
      'every change delivered',
      20_000,
    );
    clearInterval(draining);
    const counts = report(checker);
    expect(roundsThatKilled).toEqual([0, 1, 2, 3, 4, 5]);
    expect(stream.state.error).toBeUndefined();
    expect(counts).toMatchObject({ lost: 0, outOfOrder: 0, duplicates: 0 });
    expect(counts.produced).toBeGreaterThan(100);
    // The consumer's position was saved through the killed connections too.
    await eventually(async () => (await tide.consumers())[0]?.lagChanges === 0, 'position saved');
    stream.unsubscribe();
  });
});

describe('16 writers, some holding their transaction open after writing', () => {
  it('delivers every update of every row once, per row in commit order', async () => {
    const tide = await scenarioTable('contended');
    await db.pool.query(`INSERT INTO contended SELECT g, 0 FROM generate_series(1, 24) g`);
    const checker = new DeliveryChecker('16 writers, long transactions');
    const stream = follow(tide, 'contended', { columns: ['seq'] });
    await stream.ready;
    const deadline = Date.now() + 2_500;
    const writers = Array.from({ length: 16 }, async (_, writer) => {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      for (let n = 0; Date.now() < deadline; n += 1) {
        await client.query('BEGIN');
        // Take an xid early, then update: positions are taken long before commit.
        await client.query(`SELECT pg_current_xact_id()`);
        if (writer % 3 === 0) await sleep(Math.random() * 20);
        const id = 1 + Math.floor(Math.random() * 24);
        const { rows } = await client.query(`UPDATE contended SET seq = seq + 1 WHERE id = $1 RETURNING seq`, [id]);
        if (writer % 2 === 0) await sleep(Math.random() * 15); // hold the row lock and the xid
        await client.query('COMMIT');
        checker.produce(id, rows[0].seq as number);
      }
      await client.end();
    });
    await Promise.all(writers);
    await eventually(
      () => {
        for (const change of stream.changes.splice(0)) checker.deliver(change.key['id'] as number, change.new!['seq'] as number);
        return checker.complete();
      },
      'every update delivered',
      20_000,
    );
    await sleep(100);
    for (const change of stream.changes.splice(0)) checker.deliver(change.key['id'] as number, change.new!['seq'] as number);
    const counts = report(checker);
    expect(counts).toMatchObject({ lost: 0, outOfOrder: 0, duplicates: 0 });
    expect(counts.produced).toBeGreaterThan(200);
    stream.unsubscribe();
  });
});

describe('replay of a 100k backlog while writers add more', () => {
  it('hands over from replay to live exactly once', async () => {
    const tide = await scenarioTable('backlog');
    const checker = new DeliveryChecker('100k replay + live writers');
    await db.pool.query(`INSERT INTO backlog SELECT g, 0, 'backlog' FROM generate_series(1, 100000) g`);
    for (let id = 1; id <= 100_000; id += 1) checker.produce(id);
    const live = follow(tide, 'backlog'); // keeps the shared reader moving while the replay runs
    await live.ready;
    const replay = follow(tide, 'backlog', { from: 'beginning' });
    const writers = Array.from({ length: 4 }, async (_, writer) => {
      for (let n = 0; n < 500; n += 1) {
        const id = 200_000 + writer * 1000 + n;
        await db.pool.query(`INSERT INTO backlog VALUES ($1, 0, 'live')`, [id]);
        checker.produce(id);
      }
    });
    await Promise.all([...writers, replay.ready]);
    await eventually(
      () => {
        for (const change of replay.changes.splice(0)) checker.deliver(change.key['id'] as number);
        return checker.complete();
      },
      'backlog and live delivered',
      30_000,
    );
    await sleep(100);
    for (const change of replay.changes.splice(0)) checker.deliver(change.key['id'] as number);
    const counts = report(checker);
    expect(counts).toMatchObject({ produced: 102_000, delivered: 102_000, lost: 0, duplicates: 0, outOfOrder: 0 });
    live.unsubscribe();
    replay.unsubscribe();
  });
});

describe('rollbacks and savepoints', () => {
  it('delivers exactly the committed writes', async () => {
    const tide = await scenarioTable('undone');
    const checker = new DeliveryChecker('rollbacks and savepoints');
    const stream = follow(tide, 'undone');
    await stream.ready;
    const writers = Array.from({ length: 4 }, async (_, writer) => {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      for (let n = 0; n < 60; n += 1) {
        const id = writer * 10_000 + n * 10;
        await client.query('BEGIN');
        await client.query(`INSERT INTO undone VALUES ($1, 0)`, [id]);
        await client.query('SAVEPOINT inner_work');
        await client.query(`INSERT INTO undone VALUES ($1, 0)`, [id + 1]);
        const keepInner = Math.random() < 0.5;
        await client.query(keepInner ? 'RELEASE SAVEPOINT inner_work' : 'ROLLBACK TO SAVEPOINT inner_work');
        const commit = Math.random() < 0.7;
        await client.query(commit ? 'COMMIT' : 'ROLLBACK');
        if (commit) {
          checker.produce(id);
          if (keepInner) checker.produce(id + 1);
        }
      }
      await client.end();
    });
    await Promise.all(writers);
    await eventually(
      () => {
        for (const change of stream.changes.splice(0)) checker.deliver(change.key['id'] as number);
        return checker.complete();
      },
      'committed writes delivered',
    );
    await sleep(200);
    for (const change of stream.changes.splice(0)) checker.deliver(change.key['id'] as number);
    const counts = report(checker);
    expect(checker.problems).toEqual([]);
    expect(counts).toMatchObject({ lost: 0, duplicates: 0, outOfOrder: 0 });
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM undone`);
    expect(counts.delivered).toBe(rows[0].n);
    stream.unsubscribe();
  });
});

