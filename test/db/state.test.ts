import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

interface Counter {
  id: number;
  version: number;
  label: string;
}

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE counters (id int PRIMARY KEY, version int NOT NULL, label text NOT NULL)`);
  tide = await db.tide({ pruneInterval: 0 });
  await tide.watch('counters');
  await db.pool.query(`INSERT INTO counters SELECT g, 0, 'c' || g FROM generate_series(1, 20) g`);
});
afterAll(() => db.drop());

async function tableRows(): Promise<Map<string, Counter>> {
  const { rows } = await db.pool.query<{ row: Counter }>(`SELECT to_jsonb(c) AS row FROM counters c`);
  return new Map(rows.map(({ row }) => [String(row.id), row]));
}

/** Follows state$, failing if any row's version ever goes backwards (a change applied twice or out of order). */
function followState(options = {}) {
  const latest: { rows?: ReadonlyMap<string, Counter>; emissions: number; regressions: string[] } = {
    emissions: 0,
    regressions: [],
  };
  const subscription = tide.state$<Counter>('counters', options).subscribe((rows) => {
    const previous = latest.rows;
    if (previous) {
      for (const [key, row] of rows) {
        const before = previous.get(key);
        if (before && row.version < before.version) latest.regressions.push(`${key}: ${before.version} -> ${row.version}`);
      }
    }
    latest.rows = rows;
    latest.emissions += 1;
  });
  return { latest, subscription };
}

describe('state$', () => {
  it('starts from a snapshot and follows changes while writers run: never regresses, ends equal to the table', async () => {
    let writing = true;
    const writers = Array.from({ length: 4 }, async (_, writer) => {
      let round = 0;
      while (writing) {
        const id = 1 + ((writer * 7 + round) % 20);
        await db.pool.query(`UPDATE counters SET version = version + 1 WHERE id = $1`, [id]);
        if (round % 25 === 0) {
          await db.pool.query(`DELETE FROM counters WHERE id = $1`, [100 + writer]);
          await db.pool.query(`INSERT INTO counters VALUES ($1, 0, 'w') ON CONFLICT DO NOTHING`, [100 + writer]);
        }
        round += 1;
      }
    });
    // Subscribe several times while writes are in full swing.
    const followers = [];
    for (let index = 0; index < 3; index += 1) {
      await new Promise((resolve) => setTimeout(resolve, 60));
      followers.push(followState());
    }
    await new Promise((resolve) => setTimeout(resolve, 150));
    writing = false;
    await Promise.all(writers);
    const expected = await tableRows();
    for (const { latest, subscription } of followers) {
      await eventually(() => {
        try {
          expect(new Map(latest.rows ?? [])).toEqual(expected);
          return true;
        } catch {
          return false;
        }
      }, 'state equal to the table');
      expect(latest.regressions).toEqual([]);
      expect(latest.emissions).toBeGreaterThan(1);
      subscription.unsubscribe();
    }
  });

  it('fits a transaction that committed before the snapshot above its horizon, and one that spans it', async () => {
    const spanning = new pg.Client({ connectionString: db.url });
    await spanning.connect();
    try {
      await spanning.query('BEGIN');
      await spanning.query(`UPDATE counters SET version = version + 1, label = 'spanning' WHERE id = 1`);
      // Commits before the snapshot, but above its horizon (the open transaction is older).
      await db.pool.query(`UPDATE counters SET version = version + 1, label = 'before' WHERE id = 2`);
      const { latest, subscription } = followState();
      await eventually(() => latest.rows !== undefined, 'snapshot');
      expect(latest.rows!.get('2')!.label).toBe('before');
      expect(latest.rows!.get('1')!.label).not.toBe('spanning');
      await spanning.query('COMMIT');
      await eventually(() => latest.rows!.get('1')!.label === 'spanning', 'spanning change applied');
      await db.pool.query(`UPDATE counters SET label = 'after' WHERE id = 2`);
      await eventually(() => latest.rows!.get('2')!.label === 'after', 'later change applied');
      expect(latest.regressions).toEqual([]);
      // The change to row 2 committed before the snapshot was not applied again on top of it.
      expect(latest.emissions).toBe(3);
      subscription.unsubscribe();
    } finally {
      await spanning.end();
    }
  });

  it('needs no log history: works after everything was pruned, and for one row', async () => {
    const forgetful = await db.tide({ pruneInterval: 0, retention: 0 });
    await forgetful.prune();
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM pgtide.log`);
    expect(rows[0].n).toBe(0);
    const expected = await tableRows();
    const { latest, subscription } = followState();
    await eventually(() => latest.rows !== undefined, 'snapshot');
    expect(latest.rows!.size).toBe(expected.size);

    const one = followState({ rowId: 3, columns: ['version'] });
    await eventually(() => one.latest.rows !== undefined, 'single-row snapshot');
    expect([...one.latest.rows!.entries()]).toEqual([['3', { id: 3, version: expected.get('3')!.version }]]);
    await db.pool.query(`UPDATE counters SET version = version + 10 WHERE id IN (3, 4)`);
    await eventually(() => one.latest.rows!.get('3')!.version === expected.get('3')!.version + 10, 'row 3 updated');
    expect(one.latest.rows!.size).toBe(1);
    await db.pool.query(`DELETE FROM counters WHERE id = 3`);
    await eventually(() => one.latest.rows!.size === 0, 'row 3 deleted');
    subscription.unsubscribe();
    one.subscription.unsubscribe();
  });
});
