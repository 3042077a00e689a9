import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE mail_users (
      id serial PRIMARY KEY,
      gid int NOT NULL,
      username text NOT NULL,
      quota_bytes bigint NOT NULL DEFAULT 0,
      note text
    )`);
  tide = await db.tide();
});
afterAll(() => db.drop());

describe('changes$ on a whole table', () => {
  // Values are what the pool returns for SELECT *: a bigint is a string, as pg gives it.
  it('delivers insert, update and delete with key, new, old and changed columns', async () => {
    const followed = follow(tide, 'mail_users');
    await followed.ready;
    const { rows } = await db.pool.query(
      `INSERT INTO mail_users (gid, username, quota_bytes) VALUES (100, 'ann', 10) RETURNING id`,
    );
    const id = rows[0].id as number;
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 20 WHERE id = $1`, [id]);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 20 WHERE id = $1`, [id]); // no-op: not captured
    await db.pool.query(`DELETE FROM mail_users WHERE id = $1`, [id]);
    await eventually(() => followed.changes.length >= 3, 'three changes');
    const [insert, update, remove] = followed.changes;

    expect(insert).toMatchObject({
      schema: 'public',
      table: 'mail_users',
      op: 'insert',
      key: { id },
      new: { id, gid: 100, username: 'ann', quota_bytes: '10', note: null },
    });
    expect(insert!.old).toBeUndefined();
    expect([...insert!.changed].sort()).toEqual(['gid', 'id', 'note', 'quota_bytes', 'username']);

    expect(update).toMatchObject({
      op: 'update',
      key: { id },
      changed: ['quota_bytes'],
      new: { id, quota_bytes: '20', username: 'ann' },
      old: { id, quota_bytes: '10', username: 'ann', gid: 100, note: null },
    });

    expect(remove).toMatchObject({ op: 'delete', key: { id }, old: { id, quota_bytes: '20' } });
    expect(remove!.new).toBeUndefined();

    for (const change of followed.changes) {
      expect(change.id).toMatch(/^\d+$/);
      expect(change.txid).toMatch(/^\d+$/);
      expect(change.committedAt).toBeInstanceOf(Date);
    }
    // Each change came from its own transaction.
    expect(new Set(followed.changes.map((change) => change.txid)).size).toBe(3);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(followed.changes).toHaveLength(3);
    followed.unsubscribe();
  });

  it('delivers a multi-row statement as one change per row, in one transaction', async () => {
    const followed = follow(tide, 'mail_users');
    await followed.ready;
    await db.pool.query(`INSERT INTO mail_users (gid, username) SELECT 7, 'bulk' || g FROM generate_series(1, 250) g`);
    await eventually(() => followed.changes.length === 250, '250 inserts');
    expect(new Set(followed.changes.map((change) => change.txid)).size).toBe(1);
    expect(followed.changes.map((change) => change.new!['username'])).toEqual(
      Array.from({ length: 250 }, (_, index) => `bulk${index + 1}`),
    );
    await db.pool.query(`UPDATE mail_users SET gid = 8 WHERE gid = 7`);
    await eventually(() => followed.changes.length === 500, '250 updates');
    expect(followed.changes.slice(250).every((change) => change.op === 'update' && change.changed.join() === 'gid')).toBe(
      true,
    );
    followed.unsubscribe();
  });
});
