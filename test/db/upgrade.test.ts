import { describe, expect, it } from 'vitest';
import { firstValueFrom, take, toArray } from 'rxjs';
import { migrate } from '../../src/migrate.js';
import { migrations } from '../../src/migrations.generated.js';
import { resolveSchemaNames } from '../../src/sql.js';
import { createTestDatabase, eventually, follow, quietLogger } from '../helpers.js';

// A database installed by an earlier version keeps every change across the upgrade: the
// log written before it (and consumers' positions) read the same after it.

describe('upgrading an installed schema', () => {
  it('version 2 -> latest: the backlog written before replays whole and in order, and capture goes on', async () => {
    const db = await createTestDatabase();
    try {
      const schema = await resolveSchemaNames(db.pool, 'pgtide');
      await migrate(db.pool, schema, 2);
      await db.pool.query(`CREATE TABLE items (id int PRIMARY KEY, v text)`);
      await db.pool.query(`SELECT pgtide.watch('items', NULL)`);
      // Single-row statements, a multi-row one, and a transaction of several.
      for (let id = 1; id <= 20; id += 1) await db.pool.query(`INSERT INTO items VALUES ($1, 'a')`, [id]);
      await db.pool.query(`INSERT INTO items SELECT g, 'b' FROM generate_series(21, 60) g`);
      await db.pool.query(`BEGIN; UPDATE items SET v = 'c' WHERE id <= 30; DELETE FROM items WHERE id > 50; COMMIT`);
      const expected = (await db.pool.query<{ id: string }>(`SELECT l.id::text AS id FROM pgtide.log l ORDER BY l.id`)).rows.map((row) => row.id);
      expect(expected).toHaveLength(100);

      const tide = await db.tide({ logger: quietLogger });
      const { rows } = await db.pool.query<{ version: number }>(`SELECT max(version) AS version FROM pgtide.migrations`);
      expect(rows[0]!.version).toBe(migrations.at(-1)!.version);
      const backlog = await firstValueFrom(tide.changes$('items', { from: 'beginning' }).pipe(take(100), toArray()));
      expect(backlog.map((change) => change.id)).toEqual(expected);
      expect(backlog.at(-1)).toMatchObject({ op: 'delete', key: { id: 60 } });
      const indexes = await db.pool.query(`SELECT indexname FROM pg_indexes WHERE schemaname = 'pgtide' AND tablename = 'log' ORDER BY 1`);
      expect(indexes.rows.map((row) => row.indexname)).toEqual(['log_pkey', 'log_starts']);

      const live = follow(tide, 'items');
      await live.ready;
      await db.pool.query(`INSERT INTO items SELECT g, 'd' FROM generate_series(100, 109) g`);
      await db.pool.query(`UPDATE items SET v = 'e' WHERE id = 1`);
      await eventually(() => live.changes.length === 11, 'the writes after the upgrade');
      expect(live.changes.map((change) => [change.op, change.key['id']])).toEqual([
        ...Array.from({ length: 10 }, (_, index) => ['insert', 100 + index]),
        ['update', 1],
      ]);
      live.unsubscribe();
    } finally {
      await db.drop();
    }
  });
});
