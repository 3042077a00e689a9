import { firstValueFrom, filter } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide, TideStatus } from '../../src/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE watched_rows (id int PRIMARY KEY)');
  await db.pool.query('INSERT INTO watched_rows SELECT generate_series(1, 3000)');
  tide = await db.tide({ pruneInterval: 0, pageSize: 100 });
  await tide.watch('watched_rows');
  await db.pool.query('UPDATE watched_rows SET id = id');
});

afterAll(async () => {
  await tide?.close();
  await db?.drop();
});

const when = (check: (status: TideStatus) => boolean) => firstValueFrom(tide.status$.pipe(filter(check)));

describe('tide.status$', () => {
  it("reports LISTEN and each stream's phase: replaying, live, standby", async () => {
    const seen: TideStatus[] = [];
    const watching = tide.status$.subscribe((status) => seen.push(status));
    expect(seen[0]).toEqual({ listen: 'up', streams: [] });
    const reader = tide.changes$('watched_rows', { consumer: 'one', from: 'beginning' }).subscribe();
    await when((status) => status.streams.some((stream) => stream.consumer === 'one' && stream.phase === 'live'));
    const standby = tide.changes$('watched_rows', { consumer: 'one' }).subscribe();
    const both = await when((status) => status.streams.filter((stream) => stream.consumer === 'one').length === 2 && status.streams.some((stream) => stream.phase === 'standby'));
    expect(both.streams).toEqual([
      { table: 'public.watched_rows', consumer: 'one', phase: 'live' },
      { table: 'public.watched_rows', consumer: 'one', phase: 'standby' },
    ]);
    const phases = seen.flatMap((status) => status.streams.filter((stream) => stream.consumer === 'one').map((stream) => stream.phase));
    expect(phases.indexOf('replaying')).toBeGreaterThanOrEqual(0);
    expect(phases.indexOf('replaying')).toBeLessThan(phases.indexOf('live'));
    reader.unsubscribe();
    // The standby takes over.
    await when((status) => status.streams.length === 1 && status.streams[0]!.phase === 'live');
    standby.unsubscribe();
    await when((status) => status.streams.length === 0);
    watching.unsubscribe();
  });
});
