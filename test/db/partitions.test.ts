import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers.js';

// A consumer group's partitions are split on the server by a hash of each row's key
// fields as logged (migration 6). These check the key fields read out of the record text
// against PostgreSQL's own record text of the key alone, for keys meant to trip a
// parser, and that a row keeps its hash through an update, a delete and a new shape.

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  // Key columns neither first nor in table order, with wide columns around them.
  await db.pool.query(`CREATE TABLE keyed (
    note text, name text NOT NULL, doc jsonb, n int NOT NULL, tail text, PRIMARY KEY (n, name))`);
  const tide = await db.tide({ pruneInterval: 0 });
  await tide.watch('keyed');
});

afterAll(async () => {
  await db.drop();
});

interface Hashed {
  readonly id: string;
  readonly op: string;
  readonly key: string;
  readonly key_hash: number | null;
}

/** The last id in the log: rows logged after it are a test's own. */
async function lastLogId(): Promise<string> {
  const { rows } = await db.pool.query<{ id: string }>('SELECT coalesce(max(id), 0)::text AS id FROM pgtide.log');
  return rows[0]!.id;
}

/** The log rows of `keyed` after `after` with the hash read_batch gives them, and their key as logged. */
async function hashedRows(after = '0'): Promise<Hashed[]> {
  const { rows } = await db.pool.query<Hashed>(
    `SELECT r.id::text, r.op::text, coalesce(r.new, r.old) AS key, r.key_hash
       FROM pgtide.read_batch('keyed'::regclass, (SELECT max(era) FROM pgtide.eras), '3:3:', NULL, NULL, 100000, false, NULL, true, NULL, NULL) r
      WHERE r.id > $1::int8 ORDER BY r.id`,
    [after],
  );
  return rows;
}

/** The hash of a key as PostgreSQL prints the key alone: its record text without the parentheses. */
async function expectedHash(name: string, n: number): Promise<number> {
  const { rows } = await db.pool.query<{ hash: number }>(
    `SELECT hashtext(substr(r, 2, length(r) - 2)) & 2147483647 AS hash FROM (SELECT ROW($1::text, $2::int)::text AS r) k`,
    [name, n],
  );
  return rows[0]!.hash;
}

const hostile = fc.oneof(
  fc.string({ unit: fc.constantFrom('"', '\\', ',', '(', ')', ' ', '\t', '\n', 'a', 'é', '{', '}', "'", '""') }),
  fc.string(),
  fc.constant(''),
);

describe('partitions by key (read_batch key hashes)', () => {
  it('reads the key fields of any row exactly as PostgreSQL prints the key alone', async () => {
    await fc.assert(
      fc.asyncProperty(hostile, fc.integer({ min: -1000, max: 1000 }), hostile, async (name, n, around) => {
        const clean = name.replaceAll('\u0000', '');
        const filler = around.replaceAll('\u0000', '');
        await db.pool.query('TRUNCATE keyed');
        await db.pool.query(`INSERT INTO keyed VALUES ($1, $2, $3, $4, $1)`, [filler, clean, JSON.stringify({ s: filler }), n]);
        const rows = (await hashedRows()).filter((row) => row.op === 'i');
        expect(rows.at(-1)!.key_hash).toBe(await expectedHash(clean, n));
      }),
      { numRuns: 150 },
    );
  });

  it('gives a row the same hash when it is updated, deleted and logged in a new shape', async () => {
    await db.pool.query('TRUNCATE keyed');
    const mark = await lastLogId();
    await db.pool.query(`INSERT INTO keyed VALUES ('x', 'a,"b"', NULL, 7, ')'), ('y', '', NULL, 8, '(')`);
    await db.pool.query(`UPDATE keyed SET note = 'changed', doc = '{"k": ",)"}'`);
    await db.pool.query('ALTER TABLE keyed DROP COLUMN note');
    await db.pool.query(`UPDATE keyed SET tail = 'again'`);
    await db.pool.query(`DELETE FROM keyed`);
    await db.pool.query('TRUNCATE keyed');
    const rows = (await hashedRows(mark)).filter((row) => row.op === 'i' || row.op === 'u' || row.op === 'd');
    const byHash = new Map<number, string[]>();
    for (const row of rows) byHash.set(row.key_hash!, [...(byHash.get(row.key_hash!) ?? []), row.op]);
    expect(new Set(byHash.keys())).toEqual(new Set([await expectedHash('a,"b"', 7), await expectedHash('', 8)]));
    for (const ops of byHash.values()) expect(ops).toEqual(['i', 'u', 'u', 'd']);
    const truncates = (await hashedRows(mark)).filter((row) => row.op === 't');
    expect(truncates.length).toBe(1);
    expect(truncates[0]!.key_hash).toBeNull();
  });

  it('reads only the rows of the partitions asked for, and every row in exactly one', async () => {
    const mark = await lastLogId();
    await db.pool.query(`INSERT INTO keyed (name, n) SELECT 'row ' || g, g FROM generate_series(1, 300) g`);
    const count = 4;
    const era = `(SELECT max(era) FROM pgtide.eras)`;
    const seen = new Map<string, number>();
    for (let part = 0; part < count; part += 1) {
      const { rows } = await db.pool.query<{ id: string; key_hash: number | null; op: string }>(
        `SELECT r.id::text, r.key_hash, r.op::text FROM pgtide.read_batch('keyed'::regclass, ${era}, '3:3:', NULL, NULL, 100000, false, NULL, false, $1, $2) r
          WHERE r.id > $3::int8`,
        [count, [part], mark],
      );
      for (const row of rows) {
        if (row.op !== 'i') continue;
        expect(row.key_hash! % count).toBe(part);
        expect(seen.has(row.id)).toBe(false);
        seen.set(row.id, part);
      }
    }
    expect(seen.size).toBe(300);
    const shares = [...Array(count).keys()].map((part) => [...seen.values()].filter((p) => p === part).length);
    for (const share of shares) expect(share).toBeGreaterThan(30);
  });

  it('refuses partitions without a partition count', async () => {
    await expect(
      db.pool.query(`SELECT * FROM pgtide.read_batch('keyed'::regclass, 1, '3:3:', NULL, NULL, 10, false, NULL, false, NULL, '{0}')`),
    ).rejects.toThrow(/part_count/);
  });
});
