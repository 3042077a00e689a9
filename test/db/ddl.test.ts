import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE profiles (id int PRIMARY KEY, name text, bio text, age int)`);
  tide = await db.tide();
  await tide.watch('profiles');
});
afterAll(() => db.drop());

describe('DDL on a watched table', () => {
  it('keeps capturing updates after columns are added, renamed and dropped', async () => {
    const followed = follow(tide, 'profiles');
    await followed.ready;
    await db.pool.query(`INSERT INTO profiles VALUES (1, 'ann', 'hi', 30)`);
    await db.pool.query(`ALTER TABLE profiles DROP COLUMN bio`);
    await db.pool.query(`ALTER TABLE profiles RENAME COLUMN age TO years`);
    await db.pool.query(`ALTER TABLE profiles ADD COLUMN city text`);
    await db.pool.query(`UPDATE profiles SET years = 31, city = 'Oslo' WHERE id = 1`);
    await eventually(() => followed.changes.length === 2, 'insert and update');
    expect(followed.changes[1]).toMatchObject({
      op: 'update',
      changed: ['years', 'city'],
      new: { id: 1, name: 'ann', years: 31, city: 'Oslo' },
      old: { years: 30, city: null },
    });
    followed.unsubscribe();
  });

  it('refuses to drop the primary key of a watched table, naming the fix', async () => {
    await expect(db.pool.query(`ALTER TABLE profiles DROP CONSTRAINT profiles_pkey`)).rejects.toThrow(
      /pgtide watches table public.profiles, which needs a primary key/,
    );
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM pg_index WHERE indrelid = 'profiles'::regclass`);
    expect(rows[0].n).toBe(1);
  });

  it('forgets a dropped table; its consumers are still listed, without a table', async () => {
    await db.pool.query(`CREATE TABLE doomed (id int PRIMARY KEY)`);
    await tide.watch('doomed');
    const consumer = tide.changes$('doomed', { consumer: 'doomed-reader' }).subscribe();
    const deadline = Date.now() + 10_000;
    while (!(await tide.consumers()).some((info) => info.name === 'doomed-reader') && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    consumer.unsubscribe();
    await db.pool.query(`DROP TABLE doomed`);
    const { rows } = await db.pool.query(`SELECT table_name FROM pgtide.watched ORDER BY 1`);
    expect(rows).toEqual([{ table_name: 'profiles' }]);
    expect((await tide.consumers()).find((info) => info.name === 'doomed-reader')).toMatchObject({ table: null, lagChanges: 0 });
    await tide.dropConsumer('doomed-reader');
  });
});
