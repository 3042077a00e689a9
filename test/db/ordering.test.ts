import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Change, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL);
    CREATE TABLE events (id bigserial PRIMARY KEY, writer int NOT NULL, seq int NOT NULL);
    CREATE TABLE quiet (id int PRIMARY KEY, v text);`);
  tide = await db.tide();
  await tide.watch('events');
  await tide.watch('counters');
  await tide.watch('quiet');
});
afterAll(() => db.drop());

/** Asserts every (writer, seq) arrived exactly once, and per writer in order. */
function expectExactlyOnceInOrder(changes: Change[], writers: number, perWriter: number): void {
  const seen = new Map<number, number[]>();
  for (const change of changes) {
    const writer = change.new!['writer'] as number;
    const list = seen.get(writer) ?? [];
    list.push(change.new!['seq'] as number);
    seen.set(writer, list);
  }
  for (let writer = 0; writer < writers; writer += 1) {
    expect(seen.get(writer), `writer ${writer}`).toEqual(Array.from({ length: perWriter }, (_, seq) => seq));
  }
  expect(changes).toHaveLength(writers * perWriter);
}

describe('durability while nobody listens', () => {
  it('delivers changes written with no subscriber to a stream from the beginning and to a new consumer', async () => {
    await db.pool.query(`INSERT INTO quiet SELECT g, 'v' || g FROM generate_series(1, 5) g`);
    const replay = follow(tide, 'quiet', { from: 'beginning' });
    await replay.ready;
    expect(replay.changes.map((change) => change.key['id'])).toEqual([1, 2, 3, 4, 5]);

    const third = replay.changes[2]!;
    const after = follow(tide, 'quiet', { from: { after: third.id } });
    await after.ready;
    expect(after.changes.map((change) => change.key['id'])).toEqual([4, 5]);

    const consumer = follow(tide, 'quiet', { consumer: 'mailer', from: 'beginning' });
    await consumer.ready;
    expect(consumer.changes).toHaveLength(5);
    const { rows } = await db.pool.query(`SELECT name, relids[1]::regclass::text AS t FROM pgtide.consumers`);
    expect(rows).toEqual([{ name: 'mailer', t: 'quiet' }]);
    for (const followed of [replay, after, consumer]) followed.unsubscribe();
  });

  it('resumes a durable consumer from its stored cursor, not from `from`', async () => {
    const first = follow(tide, 'quiet', { consumer: 'resumer', from: 'now' });
    await first.ready;
    first.unsubscribe();
    await db.pool.query(`INSERT INTO quiet VALUES (100, 'while away')`);
    const again = follow(tide, 'quiet', { consumer: 'resumer', from: 'now' });
    await again.ready;
    expect(again.changes.map((change) => change.key['id'])).toEqual([100]);
    again.unsubscribe();
  });
});

describe('replay then live', () => {
  it('hands over from a 20k-change backlog to live with concurrent writers: every change once, in order', async () => {
    const writers = 4;
    const backlogPerWriter = 5_000;
    await db.pool.query(
      `INSERT INTO events (writer, seq) SELECT w, s FROM generate_series(0, $1 - 1) w, generate_series(0, $2 - 1) s ORDER BY s, w`,
      [writers, backlogPerWriter],
    );
    // Another stream keeps the shared feed busy, so the replaying stream joins a moving feed.
    const live = follow(tide, 'events');
    await live.ready;
    const replaying = follow(tide, 'events', { from: 'beginning' });
    const livePerWriter = 300;
    await Promise.all(
      Array.from({ length: writers }, async (_, writer) => {
        for (let seq = backlogPerWriter; seq < backlogPerWriter + livePerWriter; seq += 1) {
          await db.pool.query(`INSERT INTO events (writer, seq) VALUES ($1, $2)`, [writer, seq]);
        }
      }),
    );
    await replaying.ready;
    const total = writers * (backlogPerWriter + livePerWriter);
    await eventually(() => replaying.changes.length >= total, `${total} changes`, 30_000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expectExactlyOnceInOrder(replaying.changes, writers, backlogPerWriter + livePerWriter);
    expect(live.changes).toHaveLength(writers * livePerWriter);
    live.unsubscribe();
    replaying.unsubscribe();
  });
});

describe('visibility', () => {
  it('delivers each change when its own transaction commits: an older open transaction delays only itself', async () => {
    const followed = follow(tide, 'counters');
    await followed.ready;
    const slow = new pg.Client({ connectionString: db.url });
    await slow.connect();
    try {
      await slow.query('BEGIN');
      await slow.query(`INSERT INTO counters VALUES (1, 1)`); // logged first, commits last
      for (let id = 2; id <= 20; id += 1) await db.pool.query(`INSERT INTO counters VALUES ($1, 1)`, [id]);
      await eventually(() => followed.changes.length === 19, 'the nineteen later commits, while the first is open');
      expect(followed.changes.map((change) => change.key['id'])).toEqual(Array.from({ length: 19 }, (_, index) => index + 2));
      await slow.query('COMMIT');
      await eventually(() => followed.changes.length === 20, 'the open one, once committed');
      expect(followed.changes[19]!.key['id']).toBe(1);
    } finally {
      await slow.end();
    }
    followed.unsubscribe();
  });

  it('orders two updates of one row by commit, even when the later committer has the older transaction id', async () => {
    await db.pool.query(`INSERT INTO counters VALUES (100, 0)`);
    const followed = follow(tide, 'counters', { rowId: 100 });
    await followed.ready;
    const older = new pg.Client({ connectionString: db.url });
    await older.connect();
    try {
      await older.query('BEGIN');
      await older.query(`INSERT INTO quiet VALUES (500, 'takes an xid first')`);
      // A younger transaction updates the row and commits...
      await db.pool.query(`UPDATE counters SET value = 1 WHERE id = 100`);
      // ...then the older one updates the same row and commits last.
      await older.query(`UPDATE counters SET value = 2 WHERE id = 100`);
      await older.query('COMMIT');
    } finally {
      await older.end();
    }
    await eventually(() => followed.changes.length === 2, 'both updates');
    const [first, second] = followed.changes;
    expect(BigInt(first!.txid)).toBeGreaterThan(BigInt(second!.txid));
    expect([first!.new!['value'], second!.new!['value']]).toEqual([1, 2]);
    followed.unsubscribe();
  });

  it('never delivers rolled-back writes, including a rolled-back savepoint inside a committed transaction', async () => {
    const followed = follow(tide, 'quiet');
    await followed.ready;
    const client = await db.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO quiet VALUES (600, 'rolled back')`);
      await client.query('ROLLBACK');
      await client.query('BEGIN');
      await client.query(`INSERT INTO quiet VALUES (601, 'kept')`);
      await client.query('SAVEPOINT s');
      await client.query(`INSERT INTO quiet VALUES (602, 'savepoint rolled back')`);
      await client.query('ROLLBACK TO SAVEPOINT s');
      await client.query(`INSERT INTO quiet VALUES (603, 'kept too')`);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await eventually(() => followed.changes.length >= 2, 'committed rows');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(followed.changes.map((change) => change.key['id'])).toEqual([601, 603]);
    followed.unsubscribe();
  });
});

describe('stricter isolation levels', () => {
  for (const level of ['REPEATABLE READ', 'SERIALIZABLE']) {
    it(`delivers a ${level} insert that re-creates a key deleted after its snapshot after the delete: state$ ends equal to the table`, async () => {
      const key = level === 'SERIALIZABLE' ? 901 : 900;
      const row = follow(tide, 'counters', { rowId: key });
      await row.ready;
      const states: Array<ReadonlyMap<string, Record<string, unknown>>> = [];
      const subscription = tide.state$('counters', { rowId: key }).subscribe((state) => states.push(state));
      await eventually(() => states.length > 0, 'the first state');
      const late = new pg.Client({ connectionString: db.url });
      await late.connect();
      try {
        // B takes an xid and a snapshot, A inserts the key, C deletes it, B re-creates it.
        await late.query(`BEGIN ISOLATION LEVEL ${level}`);
        await late.query(`INSERT INTO quiet VALUES ($1, 'fixes snapshot and xid')`, [key]);
        await db.pool.query(`INSERT INTO counters VALUES ($1, 0)`, [key]);
        await db.pool.query(`DELETE FROM counters WHERE id = $1`, [key]);
        await late.query(`INSERT INTO counters VALUES ($1, 1)`, [key]);
        await late.query('COMMIT');
      } finally {
        await late.end();
      }
      await eventually(() => row.changes.length === 3, 'insert, delete, insert');
      expect(row.changes.map((change) => [change.op, change.new?.['value'] ?? null])).toEqual([
        ['insert', 0],
        ['delete', null],
        ['insert', 1],
      ]);
      await eventually(() => states.at(-1)?.size === 1, 'the re-created row in state$');
      expect([...states.at(-1)!.values()]).toEqual([{ id: key, value: 1 }]);
      subscription.unsubscribe();
      row.unsubscribe();
      await db.pool.query(`DELETE FROM quiet WHERE id = $1`, [key]);
    });
  }

  it('lets ordinary REPEATABLE READ writes through, delivered in order', async () => {
    const followed = follow(tide, 'counters', { rowId: 950 });
    await followed.ready;
    const client = await db.pool.connect();
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await client.query(`INSERT INTO counters VALUES (950, 1)`);
      await client.query(`UPDATE counters SET value = 2 WHERE id = 950`);
      await client.query('COMMIT');
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await client.query(`DELETE FROM counters WHERE id = 950`);
      await client.query(`INSERT INTO counters VALUES (950, 3)`);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await eventually(() => followed.changes.length === 4, 'four changes');
    expect(followed.changes.map((change) => [change.op, change.new?.['value'] ?? null])).toEqual([
      ['insert', 1],
      ['update', 2],
      ['delete', null],
      ['insert', 3],
    ]);
    followed.unsubscribe();
  });
});

describe('what holds delivery back', () => {
  it('lists open transactions, saying they hold back only their own changes and pruning', async () => {
    const holder = new pg.Client({ connectionString: db.url, application_name: 'long-report' });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`INSERT INTO quiet VALUES (700, 'open')`);
      const pid = (await holder.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      const blockers = await tide.blockers();
      expect(blockers[0]).toMatchObject({ kind: 'open', pid, applicationName: 'long-report', state: 'idle in transaction' });
      expect(blockers[0]!.holdsBack).toContain('its own changes');
      expect(blockers[0]!.ageSeconds).toBeGreaterThanOrEqual(0);
      expect(blockers[0]!.txid).toMatch(/^\d+$/);
      await holder.query('ROLLBACK');
    } finally {
      await holder.end();
    }
  });
});
