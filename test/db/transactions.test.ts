import pg from 'pg';
import { concatMap, type Observable, type Subscription } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { PgTideError, type Tide, type Transaction } from '../../src/index.js';
import { createTestDatabase, eventually, follow, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL);
    CREATE TABLE lines (order_id int, n int, item text, PRIMARY KEY (order_id, n));
    CREATE TABLE audit (id serial PRIMARY KEY, note text);
    CREATE TABLE pairs (writer int, seq int, PRIMARY KEY (writer, seq));
    CREATE TABLE pair_marks (writer int, seq int, PRIMARY KEY (writer, seq));`);
  tide = await db.tide({ acknowledgeFlushDelay: 0 });
  for (const table of ['orders', 'lines', 'audit', 'pairs', 'pair_marks']) await tide.watch(table);
});
afterAll(() => db.drop());

function collect(stream: Observable<Transaction>): { transactions: Transaction[]; subscription: Subscription; errors: unknown[] } {
  const transactions: Transaction[] = [];
  const errors: unknown[] = [];
  const subscription = stream.subscribe({ next: (tx) => transactions.push(tx), error: (error: unknown) => errors.push(error) });
  return { transactions, subscription, errors };
}

/** The writer's own transaction id, read inside its transaction. */
async function txidOf(client: pg.PoolClient | pg.Client): Promise<string> {
  return (await client.query<{ txid: string }>('SELECT pg_current_xact_id()::text AS txid')).rows[0]!.txid;
}

describe('transactions$', () => {
  it('emits each transaction once, with its changes to the followed tables in statement order and the tables it wrote', async () => {
    const { transactions, subscription } = collect(tide.transactions$(['orders', 'lines'], { from: 'now' }));
    await new Promise((resolve) => setTimeout(resolve, 100));
    const client = await db.pool.connect();
    let first: string;
    let second: string;
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO orders VALUES (1, 10)`);
      await client.query(`INSERT INTO lines VALUES (1, 1, 'tea'), (1, 2, 'cake')`);
      await client.query(`INSERT INTO audit (note) VALUES ('not followed')`);
      await client.query(`UPDATE orders SET total = 12 WHERE id = 1`);
      first = await txidOf(client);
      await client.query('COMMIT');
      await client.query('BEGIN');
      await client.query(`DELETE FROM lines WHERE order_id = 1 AND n = 2`);
      second = await txidOf(client);
      await client.query('COMMIT');
      await client.query(`INSERT INTO audit (note) VALUES ('a transaction of an unfollowed table only')`);
    } finally {
      client.release();
    }
    await eventually(() => transactions.length === 2, 'two transactions');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(transactions).toHaveLength(2);
    expect(transactions.map((tx) => tx.txid)).toEqual([first, second]);
    expect(transactions[0]!.tables).toEqual(['orders', 'lines']);
    expect(transactions[0]!.changes.map((change) => [change.table, change.op])).toEqual([
      ['orders', 'insert'],
      ['lines', 'insert'],
      ['lines', 'insert'],
      ['orders', 'update'],
    ]);
    expect(transactions[1]!.tables).toEqual(['lines']);
    expect(transactions[1]!.changes.map((change) => [change.op, change.key])).toEqual([['delete', { order_id: 1, n: 2 }]]);
    subscription.unsubscribe();
  });

  it('orders transactions by every row\'s commit order, even when the later committer has the older txid', async () => {
    await db.pool.query(`INSERT INTO orders VALUES (50, 0)`);
    const { transactions, subscription } = collect(tide.transactions$(['orders'], { from: 'now' }));
    await new Promise((resolve) => setTimeout(resolve, 100));
    const older = new pg.Client({ connectionString: db.url });
    await older.connect();
    try {
      await older.query('BEGIN');
      await older.query(`INSERT INTO audit (note) VALUES ('takes an xid first')`);
      await db.pool.query(`UPDATE orders SET total = 1 WHERE id = 50`);
      await older.query(`UPDATE orders SET total = 2 WHERE id = 50`);
      await older.query('COMMIT');
    } finally {
      await older.end();
    }
    await eventually(() => transactions.length === 2, 'both updates');
    expect(transactions.map((tx) => tx.changes[0]!.new!['total'])).toEqual([1, 2]);
    expect(BigInt(transactions[0]!.txid)).toBeGreaterThan(BigInt(transactions[1]!.txid));
    subscription.unsubscribe();
  });

  it('under 4 concurrent writers, replayed and live: every transaction exactly once, whole, per writer in order', async () => {
    const backlog = 50;
    for (let writer = 0; writer < 4; writer += 1) {
      for (let seq = 0; seq < backlog; seq += 1) {
        // One simple-protocol query string: two statements, one transaction.
        await db.pool.query(`INSERT INTO pairs VALUES (${writer}, ${seq}); INSERT INTO pair_marks VALUES (${writer}, ${seq})`);
      }
    }
    const { transactions, subscription } = collect(tide.transactions$(['pairs', 'pair_marks'], { from: 'beginning' }));
    const perWriter = 150;
    await Promise.all(
      Array.from({ length: 4 }, async (_, writer) => {
        const client = await db.pool.connect();
        try {
          for (let seq = backlog; seq < perWriter; seq += 1) {
            await client.query('BEGIN');
            await client.query(`INSERT INTO pairs VALUES ($1, $2)`, [writer, seq]);
            await client.query(`INSERT INTO pair_marks VALUES ($1, $2)`, [writer, seq]);
            await client.query('COMMIT');
          }
        } finally {
          client.release();
        }
      }),
    );
    await eventually(() => transactions.length >= 4 * perWriter, `${4 * perWriter} transactions`, 20_000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(transactions).toHaveLength(4 * perWriter);
    expect(new Set(transactions.map((tx) => tx.txid)).size).toBe(4 * perWriter);
    const seqs = new Map<number, number[]>();
    let outOfOrder = 0;
    for (const tx of transactions) {
      expect(tx.changes.map((change) => change.table)).toEqual(['pairs', 'pair_marks']);
      const writer = tx.changes[0]!.new!['writer'] as number;
      const list = seqs.get(writer) ?? [];
      if (list.length > 0 && list[list.length - 1]! > (tx.changes[0]!.new!['seq'] as number)) outOfOrder += 1;
      list.push(tx.changes[0]!.new!['seq'] as number);
      seqs.set(writer, list);
    }
    console.log(`transactions$ 4 writers: produced ${4 * perWriter} / delivered ${transactions.length} / out-of-order ${outOfOrder}`);
    expect(outOfOrder).toBe(0);
    subscription.unsubscribe();
  });

  it('as a durable consumer of two tables: acknowledging a transaction acknowledges its changes; a crash redelivers only its unacknowledged batch', async () => {
    const crashing = await db.tide({ acknowledgeFlushDelay: 0 });
    const seen: string[] = [];
    const subscription = crashing
      .transactions$(['orders', 'lines'], { consumer: 'invoicing', from: 'now' })
      .pipe(
        concatMap(async (tx) => {
          seen.push(tx.txid);
          return tx;
        }),
        acknowledge(),
      )
      .subscribe();
    await eventually(async () => (await crashing.consumers()).some((consumer) => consumer.name === 'invoicing'), 'registered');
    const txids: string[] = [];
    for (let index = 0; index < 5; index += 1) {
      const client = await db.pool.connect();
      await client.query('BEGIN');
      await client.query(`INSERT INTO orders VALUES ($1, 1)`, [100 + index]);
      await client.query(`INSERT INTO lines VALUES ($1, 1, 'x')`, [100 + index]);
      txids.push(await txidOf(client));
      await client.query('COMMIT');
      client.release();
      await eventually(() => seen.length === index + 1, `transaction ${index}`);
    }
    await eventually(async () => (await crashing.consumers()).find((c) => c.name === 'invoicing')?.lagChanges === 0, 'all acknowledged');
    subscription.unsubscribe();
    await crashing.terminate();
    await db.pool.query(`INSERT INTO orders VALUES (200, 1)`);
    const resumed = await db.tide();
    const { transactions, subscription: again } = collect(resumed.transactions$(['orders', 'lines'], { consumer: 'invoicing' }));
    await eventually(() => transactions.length >= 1, 'the change written while away');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(transactions.map((tx) => tx.changes.map((change) => change.key))).toEqual([[{ id: 200 }]]);
    expect(seen).toEqual(txids);
    again.unsubscribe();
    // Another table set under the same name is refused.
    const mismatch = await new Promise((resolve) => resumed.transactions$(['orders'], { consumer: 'invoicing' }).subscribe({ error: resolve }));
    expect(mismatch).toMatchObject({ code: 'CONSUMER_TABLE_MISMATCH' });
  });

  it('refuses bad arguments with typed errors and installs nothing', async () => {
    expect(() => tide.transactions$([] as string[])).toThrow(PgTideError);
    expect(() => tide.transactions$('orders' as unknown as string[])).toThrow(expect.objectContaining({ code: 'INVALID_TABLE_NAME' }));
    expect(() => tide.transactions$(['orders', 'orders'])).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    expect(() => tide.transactions$(['orders'], { bogus: 1 } as never)).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    const unknown = await new Promise((resolve) => tide.transactions$(['orders', 'no_such_table']).subscribe({ error: resolve }));
    expect(unknown).toMatchObject({ code: 'UNKNOWN_TABLE' });
  });
});

describe('waitFor (read your writes)', () => {
  it('resolves once the change is in the live stream, at once if it already is', async () => {
    const followed = follow(tide, 'orders');
    await followed.ready;
    const client = await db.pool.connect();
    let txid: string;
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO orders VALUES (300, 3)`);
      txid = await txidOf(client);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await tide.waitFor(txid);
    expect(followed.changes.map((change) => change.txid)).toContain(txid);
    const started = Date.now();
    await tide.waitFor(txid);
    console.log(`waitFor of an already readable transaction took ${Date.now() - started} ms`);
    followed.unsubscribe();
  });

  it('waits for a transaction still open, and rejects with WAIT_TIMEOUT, TRANSACTION_ROLLED_BACK or INVALID_OPTIONS', async () => {
    const open = new pg.Client({ connectionString: db.url });
    await open.connect();
    try {
      await open.query('BEGIN');
      await open.query(`INSERT INTO orders VALUES (301, 1)`);
      const txid = await txidOf(open);
      await expect(tide.waitFor(txid, { timeout: 100 })).rejects.toMatchObject({ code: 'WAIT_TIMEOUT' });
      const waiting = tide.waitFor(txid, { timeout: 5000 });
      await open.query('COMMIT');
      await waiting;
      await open.query('BEGIN');
      await open.query(`INSERT INTO orders VALUES (302, 1)`);
      const rolledBack = await txidOf(open);
      await open.query('ROLLBACK');
      await expect(tide.waitFor(rolledBack)).rejects.toMatchObject({ code: 'TRANSACTION_ROLLED_BACK' });
    } finally {
      await open.end();
    }
    await expect(tide.waitFor('not a txid')).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
    await expect(tide.waitFor('99999999999')).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
    await expect(tide.waitFor('5', { timeout: -1 })).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
  });
});
