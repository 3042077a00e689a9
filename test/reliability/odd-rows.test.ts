import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Change, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, type TestDatabase } from '../helpers.js';
import { DeliveryChecker, report } from './checker.js';

let db: TestDatabase;
let tide: Tide;
const table = '"Odd ""Rows"""';

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE ${table} (
      "Tenant" text,
      "Item Id" uuid,
      payload bytea,
      doc json,
      docb jsonb,
      tags text[],
      amount numeric,
      at timestamptz,
      big bigint,
      nothing text,
      "ünï côdé ✓" text,
      "we""ird" int,
      PRIMARY KEY ("Tenant", "Item Id"))`);
  tide = await db.tide({ pruneInterval: 0 });
});
afterAll(() => db.drop());

/** The row as the application's pool returns it for SELECT *: what pgtide delivers. */
async function rowAsSelected(tenant: string, id: string): Promise<Record<string, unknown>> {
  const { rows } = await db.pool.query(`SELECT * FROM ${table} WHERE "Tenant" = $1 AND "Item Id" = $2`, [tenant, id]);
  return rows[0] as Record<string, unknown>;
}

describe('big and odd rows', () => {
  it('delivers every type exactly as the pool returns it for SELECT *, rows far over NOTIFY limits included', async () => {
    const checker = new DeliveryChecker('big and odd rows');
    // A name containing a double quote is given in its SQL form.
    const stream = follow(tide, table);
    const oneRow = follow(tide, table, { rowId: { Tenant: 'ténant "b"', 'Item Id': '00000000-0000-0000-0000-000000000002' } });
    await Promise.all([stream.ready, oneRow.ready]);
    const rows: Array<[string, string]> = [
      ['ténant "a"', '00000000-0000-0000-0000-000000000001'],
      ['ténant "b"', '00000000-0000-0000-0000-000000000002'],
      ["o'hara; DROP TABLE x; --", '00000000-0000-0000-0000-000000000003'],
    ];
    for (const [index, [tenant, id]] of rows.entries()) {
      await db.pool.query(
        `INSERT INTO ${table} VALUES ($1, $2, decode(repeat('ff00', $3), 'hex'), $4::json, $5::jsonb, $6, $7, $8, $9, NULL, $10, $11)`,
        [
          tenant,
          id,
          10_000 * (index + 1), // 20 kB to 60 kB of bytea
          JSON.stringify({ quote: 'say "hi"', nested: { list: [1, 2, 3] } }),
          JSON.stringify({ emoji: '🌊', long: 'x'.repeat(9000) }),
          ['a', 'b"c', 'ünï'],
          '12345678901234567890.123456789',
          '2024-02-29T12:34:56.789+02:00',
          '9007199254740993',
          '✓ ünïcödé 🌊',
          index,
        ],
      );
      checker.produce(`${tenant}|${id}`, 0);
    }
    // Updates: a json column (compared as text), bytea, and a NULL both ways.
    await db.pool.query(`UPDATE ${table} SET doc = '{"quote": "changed"}', nothing = 'now set' WHERE "Item Id" = $1`, [
      rows[1]![1],
    ]);
    await db.pool.query(`UPDATE ${table} SET payload = NULL, nothing = NULL WHERE "Item Id" = $1`, [rows[1]![1]]);
    checker.produce(`${rows[1]![0]}|${rows[1]![1]}`, 1);
    checker.produce(`${rows[1]![0]}|${rows[1]![1]}`, 2);

    await eventually(() => stream.changes.length === 5, 'five changes');
    const seqOf = new Map<string, number>();
    for (const change of stream.changes) {
      const key = `${change.key['Tenant']}|${change.key['Item Id']}`;
      const seq = seqOf.get(key) ?? 0;
      seqOf.set(key, seq + 1);
      checker.deliver(key, seq);
    }
    const counts = report(checker);
    expect(counts).toMatchObject({ lost: 0, duplicates: 0, outOfOrder: 0 });

    const [first, second, third, docUpdate, nullUpdate] = stream.changes as Change[];
    expect(first!.key).toEqual({ Tenant: rows[0]![0], 'Item Id': rows[0]![1] });
    for (const [index, change] of [first, second, third].entries()) {
      const [tenant, id] = rows[index]!;
      const expected = await rowAsSelected(tenant, id);
      if (index !== 1) expect(change!.new).toEqual(expected);
      expect((change!.new!['payload'] as Buffer).length).toBe(20_000 * (index + 1));
      expect(change!.new!['we"ird']).toBe(index);
      expect(change!.new!['ünï côdé ✓']).toBe('✓ ünïcödé 🌊');
      expect(change!.new!['at']).toEqual(new Date('2024-02-29T10:34:56.789Z'));
      expect(change!.new!['big']).toBe('9007199254740993');
      expect(change!.new!['amount']).toBe('12345678901234567890.123456789');
      expect(change!.new!['nothing']).toBeNull();
    }
    expect(docUpdate!.changed).toEqual(['doc', 'nothing']);
    expect(docUpdate!.old).toMatchObject({ doc: { quote: 'say "hi"', nested: { list: [1, 2, 3] } }, nothing: null });
    expect(docUpdate!.new).toMatchObject({ doc: { quote: 'changed' }, nothing: 'now set' });
    expect(nullUpdate!.changed).toEqual(['payload', 'nothing']);
    expect(nullUpdate!.new).toEqual(await rowAsSelected(rows[1]![0], rows[1]![1]));
    expect(oneRow.changes.map((change) => change.op)).toEqual(['insert', 'update', 'update']);
    stream.unsubscribe();
    oneRow.unsubscribe();
  });

  it('captures TRUNCATE as a change of the whole table, after the changes before it', async () => {
    await tide.watch(table);
    const stream = follow(tide, table);
    await stream.ready;
    await db.pool.query(`UPDATE ${table} SET nothing = 'before truncate'`);
    const updated = Number((await db.pool.query(`SELECT count(*) FROM ${table}`)).rows[0].count);
    await db.pool.query(`TRUNCATE ${table}`);
    await eventually(() => stream.changes.length === updated + 1, 'the updates, then the truncate');
    expect(stream.changes.slice(0, updated).every((change) => change.op === 'update')).toBe(true);
    expect(stream.changes[updated]).toMatchObject({ op: 'truncate', key: {}, changed: [], new: undefined, old: undefined });
    expect(Number((await db.pool.query(`SELECT count(*) FROM ${table}`)).rows[0].count)).toBe(0);
    stream.unsubscribe();
  });

  it('keeps following a table renamed while watched, and survives it being dropped', async () => {
    await db.pool.query(`CREATE TABLE transient (id int PRIMARY KEY)`);
    const stream = follow(tide, 'transient');
    await stream.ready;
    await db.pool.query(`INSERT INTO transient VALUES (1)`);
    await db.pool.query(`ALTER TABLE transient RENAME TO renamed`);
    await db.pool.query(`INSERT INTO renamed VALUES (2)`);
    await eventually(() => stream.changes.length === 2, 'changes before and after the rename');
    expect(stream.changes.map((change) => change.key['id'])).toEqual([1, 2]);
    const { rows } = await db.pool.query(`SELECT table_name FROM pgtide.watched WHERE relid = 'renamed'::regclass`);
    expect(rows).toEqual([{ table_name: 'renamed' }]);
    await db.pool.query(`DROP TABLE renamed`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(stream.state.error).toBeUndefined();
    expect(stream.changes).toHaveLength(2);
    stream.unsubscribe();
  });
});
