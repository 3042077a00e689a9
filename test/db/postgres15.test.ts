import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPostgres, type EmbeddedPostgres } from '../../src/embedded.js';
import { acknowledge } from '../../operators/acknowledge.js';
import { connect, type Tide, type Transaction } from '../../src/index.js';
import { eventually, follow, quietLogger } from '../helpers.js';

// Debian's PostgreSQL 15 server, to prove pgtide on an older major version than the
// embedded default. The machines this project runs on have it; .ci/run installs it.
const binDir = process.env.PGTIDE_PG15_BIN ?? '/usr/lib/postgresql/15/bin';

describe.runIf(existsSync(`${binDir}/postgres`))('PostgreSQL 15', () => {
  let server: EmbeddedPostgres;
  let pool: pg.Pool;
  let tide: Tide;

  beforeAll(async () => {
    server = await startPostgres({ binDir, settings: { fsync: 'off' } });
    pool = new pg.Pool({ connectionString: server.connectionString });
    await pool.query(`CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric NOT NULL);
      CREATE TABLE transfers (id int PRIMARY KEY, amount numeric NOT NULL);
      CREATE TABLE audit (id serial PRIMARY KEY, note text)`);
    tide = await connect({ connectionString: server.connectionString, logger: quietLogger });
  });
  afterAll(async () => {
    await tide?.close();
    await pool?.end();
    await server?.destroy();
  });

  it('runs on server version 15', async () => {
    const { rows } = await pool.query(`SHOW server_version_num`);
    expect(Number(rows[0].server_version_num)).toBeGreaterThanOrEqual(150000);
    expect(Number(rows[0].server_version_num)).toBeLessThan(160000);
  });

  it('captures, replays and follows live changes, with columns, each change when its own transaction commits', async () => {
    await tide.watch('accounts');
    await pool.query(`INSERT INTO accounts SELECT g, 'o' || g, 0 FROM generate_series(1, 100) g`);
    const replay = follow(tide, 'accounts', { from: 'beginning' });
    const balances = follow(tide, 'accounts', { columns: ['balance'] });
    await Promise.all([replay.ready, balances.ready]);
    expect(replay.changes).toHaveLength(100);

    const slow = new pg.Client({ connectionString: server.connectionString });
    await slow.connect();
    await slow.query('BEGIN');
    await slow.query(`UPDATE accounts SET balance = 5 WHERE id = 1`);
    await pool.query(`UPDATE accounts SET owner = 'renamed' WHERE id = 2`);
    await pool.query(`UPDATE accounts SET balance = 7 WHERE id = 3`);
    // The open transaction delays only its own change.
    await eventually(() => balances.changes.length === 1, 'the committed balance update');
    expect(balances.changes[0]!.key['id']).toBe(3);
    await slow.query('COMMIT');
    await slow.end();
    await pool.query(`DELETE FROM accounts WHERE id = 4`);

    await eventually(() => replay.changes.length === 104, 'all changes on the full stream');
    await eventually(() => balances.changes.length === 3, 'balance updates and the delete');
    expect(balances.changes.map((change) => [change.op, change.key['id']])).toEqual([
      ['update', 3],
      ['update', 1],
      ['delete', 4],
    ]);
    replay.unsubscribe();
    balances.unsubscribe();
  });

  it('delivers a REPEATABLE READ insert that re-creates a key deleted after its snapshot in commit order: state$ ends equal to the table', async () => {
    const row = follow(tide, 'accounts', { rowId: 900 });
    await row.ready;
    const states: Array<ReadonlyMap<string, Record<string, unknown>>> = [];
    const subscription = tide.state$('accounts', { rowId: 900 }).subscribe((state) => states.push(state));
    await eventually(() => states.length > 0, 'the first state');
    const late = new pg.Client({ connectionString: server.connectionString });
    await late.connect();
    await late.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await late.query(`INSERT INTO audit (note) VALUES ('takes a snapshot and an xid')`);
    await pool.query(`INSERT INTO accounts VALUES (900, 'a', 0)`);
    await pool.query(`DELETE FROM accounts WHERE id = 900`);
    await late.query(`INSERT INTO accounts VALUES (900, 'from B', 1)`);
    await late.query('COMMIT');
    await late.end();
    await eventually(() => row.changes.length === 3, 'insert, delete, insert');
    expect(row.changes.map((change) => change.op)).toEqual(['insert', 'delete', 'insert']);
    await eventually(() => states.at(-1)?.get('900')?.['owner'] === 'from B', 'the re-created row in state$');
    subscription.unsubscribe();
    row.unsubscribe();
  });

  it('transactions$ across two tables, a durable consumer of both, and waitFor', async () => {
    const seen: Transaction[] = [];
    const subscription = tide
      .transactions$(['accounts', 'transfers'], { consumer: 'ledger', from: 'now' })
      .pipe(acknowledge())
      .subscribe((tx) => seen.push(tx));
    await eventually(async () => (await tide.consumers()).some((consumer) => consumer.name === 'ledger'), 'registered');
    const client = await pool.connect();
    await client.query('BEGIN');
    await client.query(`INSERT INTO transfers VALUES (1, 5)`);
    await client.query(`UPDATE accounts SET balance = balance - 5 WHERE id = 1`);
    await client.query(`INSERT INTO audit (note) VALUES ('not followed')`);
    const { rows } = await client.query<{ txid: string }>('SELECT pg_current_xact_id()::text AS txid');
    await client.query('COMMIT');
    client.release();
    await tide.waitFor(rows[0]!.txid);
    await eventually(() => seen.length === 1, 'the transaction');
    expect(seen[0]).toMatchObject({ txid: rows[0]!.txid, tables: ['accounts', 'transfers'] });
    expect(seen[0]!.changes.map((change) => [change.table, change.op])).toEqual([
      ['transfers', 'insert'],
      ['accounts', 'update'],
    ]);
    await eventually(async () => (await tide.consumers()).find((consumer) => consumer.name === 'ledger')?.lagChanges === 0, 'acknowledged');
    subscription.unsubscribe();
  });
});
