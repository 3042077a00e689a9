import { firstValueFrom, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { migrate } from '../../src/migrate.js';
import { resolveSchemaNames } from '../../src/sql.js';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers.js';

// Migration 8: an update logs only its changed columns' old values (the others NULL in
// the old record); the reader fills the rest from the new row, so `old` stays whole.

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE docs (id int PRIMARY KEY, title text, body text, meta jsonb, n numeric, at timestamptz, tags text[]);
    -- A partition whose columns sit in another order than its parent's.
    CREATE TABLE parts (region text NOT NULL, id int NOT NULL, v text, w int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
    CREATE TABLE parts_eu (w int, v text, id int NOT NULL, region text NOT NULL, extra_dropped int);
    ALTER TABLE parts_eu DROP COLUMN extra_dropped;
    ALTER TABLE parts ATTACH PARTITION parts_eu FOR VALUES IN ('eu');`);
  tide = await db.tide();
  await tide.watch('docs');
  await tide.watch('parts');
});
afterAll(() => db.drop());

/** The table's changes from the start of the log, `count` of them. */
function changesOf(table: string, count: number) {
  return firstValueFrom(tide.changes$(table, { from: 'beginning' }).pipe(take(count), toArray()));
}

describe('an update logs the old values of the columns it changed', () => {
  it('stores NULL for unchanged columns and emits the whole old row', async () => {
    const body = 'long text '.repeat(2000); // TOASTed in the table; logged once, not twice
    await db.pool.query(`INSERT INTO docs VALUES (1, 'a', $1, '{"k": [1, 2]}', 1.50, '2026-01-02 03:04:05+00', '{x,y}')`, [body]);
    const before = (await db.pool.query(`SELECT * FROM docs WHERE id = 1`)).rows[0];
    await db.pool.query(`UPDATE docs SET title = NULL, n = 2 WHERE id = 1`);
    await db.pool.query(`UPDATE docs SET title = 'b' WHERE id = 1`);
    const after = (await db.pool.query(`SELECT * FROM docs WHERE id = 1`)).rows[0];

    const logged = await db.pool.query<{ old: string; changed: string[] }>(
      `SELECT old, changed FROM pgtide.log WHERE relid = 'docs'::regclass AND op = 'u' ORDER BY id`,
    );
    expect(logged.rows).toEqual([
      { old: '(,a,,,1.50,,)', changed: ['title', 'n'] },
      { old: '(,,,,,,)', changed: ['title'] }, // title was NULL: a changed column's NULL is its old value
    ]);

    const [, first, second] = await changesOf('docs', 3);
    expect(first).toMatchObject({ op: 'update', changed: ['title', 'n'] });
    expect(first!.old).toEqual(before);
    expect(first!.new).toEqual({ ...before, title: null, n: '2' });
    expect(second!.old).toEqual({ ...before, title: null, n: '2' });
    expect(second!.new).toEqual(after);
    // The unchanged values are equal, never the same objects as the new row's.
    expect(second!.old!['meta']).not.toBe(second!.new!['meta']);
    expect(second!.old!['at']).not.toBe(second!.new!['at']);
  });

  it('logs the whole old row for a key change (a delete and an insert)', async () => {
    await db.pool.query(`INSERT INTO docs VALUES (2, 't', 'b', NULL, 3, NULL, NULL)`);
    await db.pool.query(`UPDATE docs SET id = 3 WHERE id = 2`);
    const changes = await changesOf('docs', 6);
    expect(changes.slice(4).map((change) => [change.op, change.old ?? change.new])).toEqual([
      ['delete', { id: 2, title: 't', body: 'b', meta: null, n: '3', at: null, tags: null }],
      ['insert', { id: 3, title: 't', body: 'b', meta: null, n: '3', at: null, tags: null }],
    ]);
  });

  it("takes a partition's columns in its parent's order", async () => {
    await db.pool.query(`INSERT INTO parts VALUES ('eu', 1, 'v1', 10)`);
    await db.pool.query(`UPDATE parts SET w = 11 WHERE id = 1`);
    const logged = await db.pool.query<{ old: string }>(`SELECT old FROM pgtide.log WHERE relid = 'parts'::regclass AND op = 'u'`);
    expect(logged.rows).toEqual([{ old: '(,,,10)' }]);
    const [, update] = await changesOf('parts', 2);
    expect(update).toMatchObject({ op: 'update', changed: ['w'] });
    expect(update!.old).toEqual({ region: 'eu', id: 1, v: 'v1', w: 10 });
    expect(update!.new).toEqual({ region: 'eu', id: 1, v: 'v1', w: 11 });
  });
});

describe('upgrading to migration 8', () => {
  it('keeps whole old rows logged before it and logs changed columns after it', async () => {
    const old = await createTestDatabase();
    try {
      const schema = await resolveSchemaNames(old.pool, 'pgtide');
      await migrate(old.pool, schema, 7);
      await old.pool.query(`CREATE TABLE items (id int PRIMARY KEY, a text, b int)`);
      await old.pool.query(`SELECT pgtide.watch('items', NULL)`);
      await old.pool.query(`INSERT INTO items VALUES (1, 'x', 1)`);
      await old.pool.query(`UPDATE items SET b = 2`);
      const upgraded = await old.tide({ logger: quietLogger });
      await old.pool.query(`UPDATE items SET b = 3`);
      const logged = await old.pool.query<{ old: string }>(`SELECT old FROM pgtide.log WHERE op = 'u' ORDER BY id`);
      expect(logged.rows).toEqual([{ old: '(1,x,1)' }, { old: '(,,2)' }]);
      const changes = await firstValueFrom(upgraded.changes$('items', { from: 'beginning' }).pipe(take(3), toArray()));
      expect(changes.slice(1).map((change) => [change.old, change.new])).toEqual([
        [{ id: 1, a: 'x', b: 1 }, { id: 1, a: 'x', b: 2 }],
        [{ id: 1, a: 'x', b: 2 }, { id: 1, a: 'x', b: 3 }],
      ]);
    } finally {
      await old.drop();
    }
  });
});
