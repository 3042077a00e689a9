import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPostgres, type EmbeddedPostgres } from '../../src/embedded.js';
import { connect, type Tide } from '../../src/index.js';
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
    await pool.query(`CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric NOT NULL)`);
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
});
