import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, PgTideError, type Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, poolWithQueryHook, quietLogger, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE mail_users (id int PRIMARY KEY, gid int NOT NULL, username text NOT NULL, quota_bytes bigint NOT NULL, home text);
    CREATE TABLE memberships (org text, member int, role text NOT NULL, PRIMARY KEY (org, member));`);
  tide = await db.tide();
});
afterAll(() => db.drop());

describe('columns', () => {
  it('emits inserts, deletes, and only the updates touching the columns; new/old carry key + columns', async () => {
    const quota = follow(tide, 'mail_users', { columns: ['gid', 'quota_bytes'] });
    const all = follow(tide, 'mail_users');
    await Promise.all([quota.ready, all.ready]);
    await db.pool.query(`INSERT INTO mail_users VALUES (1, 10, 'ann', 100, '/home/ann')`);
    await db.pool.query(`UPDATE mail_users SET home = '/srv/ann' WHERE id = 1`); // not a watched column
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 200, home = '/h' WHERE id = 1`);
    await db.pool.query(`DELETE FROM mail_users WHERE id = 1`);
    await eventually(() => all.changes.length === 4, 'four changes on the whole-table stream');
    await eventually(() => quota.changes.length === 3, 'three changes on the columns stream');
    expect(quota.changes.map((change) => change.op)).toEqual(['insert', 'update', 'delete']);
    expect(quota.changes[0]!.new).toEqual({ id: 1, gid: 10, quota_bytes: '100' });
    expect(quota.changes[1]).toMatchObject({
      changed: ['quota_bytes', 'home'],
      new: { id: 1, gid: 10, quota_bytes: '200' },
      old: { id: 1, gid: 10, quota_bytes: '100' },
    });
    expect(quota.changes[1]!.new).not.toHaveProperty('home');
    expect(quota.changes[2]!.old).toEqual({ id: 1, gid: 10, quota_bytes: '200' });
    quota.unsubscribe();
    all.unsubscribe();
  });

  it('captures only updates of the union of watched columns when every watcher names columns', async () => {
    await db.pool.query(`CREATE TABLE narrow (id int PRIMARY KEY, a int, b int, c int)`);
    await tide.watch('narrow', { columns: ['a'] });
    await tide.watch('narrow', { columns: ['b'] });
    const { rows: registry } = await db.pool.query(`SELECT columns FROM pgtide.watched WHERE relid = 'narrow'::regclass`);
    expect(registry[0].columns).toEqual(['a', 'b']);
    await db.pool.query(`INSERT INTO narrow VALUES (1, 0, 0, 0)`);
    await db.pool.query(`UPDATE narrow SET c = 1`);
    await db.pool.query(`UPDATE narrow SET b = 1`);
    const { rows } = await db.pool.query(
      `SELECT op, changed FROM pgtide.log WHERE relid = 'narrow'::regclass ORDER BY id`,
    );
    expect(rows).toEqual([
      { op: 'i', changed: null },
      { op: 'u', changed: ['b'] },
    ]);
  });
});

describe('rowId and field', () => {
  it('follows one row, and one field of one row', async () => {
    await db.pool.query(`INSERT INTO mail_users VALUES (2, 10, 'bob', 1, null), (3, 10, 'cy', 1, null)`);
    const row = follow(tide, 'mail_users', { rowId: 2 });
    const rowAsString = follow(tide, 'mail_users', { rowId: '2' });
    const field = follow(tide, 'mail_users', { rowId: 2, field: 'quota_bytes' });
    await Promise.all([row.ready, rowAsString.ready, field.ready]);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = quota_bytes + 1`); // both rows
    await db.pool.query(`UPDATE mail_users SET username = 'bobby' WHERE id = 2`); // not the field
    await db.pool.query(`DELETE FROM mail_users WHERE id IN (2, 3)`);
    await eventually(() => row.changes.length === 3, 'three changes of row 2');
    await eventually(() => field.changes.length === 2, 'field update and delete');
    expect(row.changes.every((change) => change.key['id'] === 2)).toBe(true);
    expect(row.changes.map((change) => change.op)).toEqual(['update', 'update', 'delete']);
    expect(rowAsString.changes.map((change) => change.id)).toEqual(row.changes.map((change) => change.id));
    expect(field.changes.map((change) => [change.op, change.new?.['quota_bytes']])).toEqual([
      ['update', '2'],
      ['delete', undefined],
    ]);
    expect(field.changes[0]!.new).toEqual({ id: 2, quota_bytes: '2' });
    for (const followed of [row, rowAsString, field]) followed.unsubscribe();
  });

  it('rowId streams subscribing at once share their start and first reads, and each still replays and goes live whole', async () => {
    await db.pool.query(`CREATE TABLE fan (id int PRIMARY KEY, v int NOT NULL)`);
    await tide.watch('fan');
    await db.pool.query(`INSERT INTO fan SELECT g, 0 FROM generate_series(1, 200) g`);
    // A Tide of its own on a pool that counts the log reads.
    let reads = 0;
    const pool = poolWithQueryHook(db.url, (text) => {
      if (/read_batch|pg_current_snapshot/.test(text)) reads += 1;
      return undefined;
    });
    const fanTide = await connect({ pool, logger: quietLogger });
    try {
      const ids = Array.from({ length: 200 }, (_, index) => index + 1);
      const replayed = ids.map((id) => follow(fanTide, 'fan', { rowId: id, from: 'beginning' }));
      const live = ids.map((id) => follow(fanTide, 'fan', { rowId: id }));
      await Promise.all([...replayed, ...live].map((followed) => followed.ready));
      // One "now" and a few pages for all of them (it was a query or two per stream).
      expect(reads).toBeLessThan(20);
      await db.pool.query(`UPDATE fan SET v = id`);
      await eventually(() => live.every((followed) => followed.changes.length === 1), 'each row stream hears its update');
      await eventually(() => replayed.every((followed) => followed.changes.length === 2), 'each replaying stream: insert and update');
      for (const [index, followed] of replayed.entries()) {
        expect(followed.changes.map((change) => [change.op, change.key['id']])).toEqual([
          ['insert', index + 1],
          ['update', index + 1],
        ]);
      }
      for (const [index, followed] of live.entries()) expect(followed.changes[0]!.new).toEqual({ id: index + 1, v: index + 1 });
      for (const followed of [...replayed, ...live]) followed.unsubscribe();
    } finally {
      await fanTide.close();
      await pool.end();
    }
  });

  it('follows a row of a composite key given as an object', async () => {
    const member = follow(tide, 'memberships', { rowId: { org: 'acme', member: 7 } });
    const table = follow(tide, 'memberships');
    await Promise.all([member.ready, table.ready]);
    await db.pool.query(`INSERT INTO memberships VALUES ('acme', 7, 'admin'), ('acme', 8, 'user'), ('beta', 7, 'user')`);
    await db.pool.query(`UPDATE memberships SET role = 'owner' WHERE org = 'acme' AND member = 7`);
    await eventually(() => table.changes.length === 4, 'four changes');
    await eventually(() => member.changes.length === 2, 'two changes of acme/7');
    expect(member.changes.map((change) => [change.op, change.key])).toEqual([
      ['insert', { org: 'acme', member: 7 }],
      ['update', { org: 'acme', member: 7 }],
    ]);
    expect(table.changes[0]!.key).toEqual({ org: 'acme', member: 7 });
    member.unsubscribe();
    table.unsubscribe();
  });

  it('turns a primary-key change into a delete of the old key and an insert of the new one', async () => {
    const table = follow(tide, 'memberships');
    await table.ready;
    await db.pool.query(`UPDATE memberships SET member = 9 WHERE org = 'beta' AND member = 7`);
    await eventually(() => table.changes.length === 2, 'delete and insert');
    expect(table.changes.map((change) => [change.op, change.key]).sort()).toEqual([
      ['delete', { org: 'beta', member: 7 }],
      ['insert', { org: 'beta', member: 9 }],
    ]);
    table.unsubscribe();
  });
});

describe('schema option', () => {
  it('types rows with zod and errors the stream with INVALID_ROW and the change id on a bad row', async () => {
    const User = z.object({ id: z.number(), username: z.string().min(3) });
    const typed = follow(tide, 'mail_users', { schema: User });
    await typed.ready;
    await db.pool.query(`INSERT INTO mail_users VALUES (20, 1, 'dora', 1, null)`);
    await eventually(() => typed.changes.length === 1, 'valid row');
    const name: string = typed.changes[0]!.new!.username;
    expect(name).toBe('dora');
    await db.pool.query(`INSERT INTO mail_users VALUES (21, 1, 'ed', 1, null)`);
    await eventually(() => typed.state.error !== undefined, 'validation error');
    const error = typed.state.error as PgTideError & { changeId: string };
    expect(error).toBeInstanceOf(PgTideError);
    expect(error.code).toBe('INVALID_ROW');
    const { rows } = await db.pool.query(
      `SELECT id::text FROM pgtide.log WHERE relid = 'mail_users'::regclass AND new LIKE '%,ed,%'`,
    );
    expect(error.changeId).toBe(rows[0].id);
  });
});
