import { Registry } from 'prom-client';
import { firstValueFrom, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processChanges } from '../../operators/processChanges.js';
import type { Change, Tide } from '../../src/index.js';
import { registerMetrics } from '../../src/metrics.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE metered (id int PRIMARY KEY, n int)');
  tide = await db.tide({ pruneInterval: 0, acknowledgeFlushDelay: 10 });
});

afterAll(async () => {
  await tide?.close();
  await db?.drop();
});

/** The value of one sample of the registry's text output, or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (wanted.every((label) => line.includes(label))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

describe('pgtide/metrics', () => {
  it('reports reads, deliveries, wake-ups, lag, in-flight, dead letters and open transactions on a prom-client registry', async () => {
    const registry = new Registry();
    const metrics = registerMetrics(tide, { registry, cacheFor: 0 });
    // A consumer that processes ids < 8, keeps 8 as a dead letter, and holds 9 and 10 in flight.
    const release: Array<() => void> = [];
    const handled = tide
      .changes$<{ id: number; n: number }>('metered', { consumer: 'metered-worker', from: 'beginning' })
      .pipe(
        processChanges(
          (change: Change<{ id: number; n: number }>) => {
            if (change.new!.id === 8) return Promise.reject(new Error('bad row'));
            if (change.new!.id >= 9) return new Promise<void>((resolve) => release.push(resolve));
            return Promise.resolve();
          },
          { concurrency: 4, attempts: 1 },
        ),
      )
      .subscribe();
    const live = firstValueFrom(tide.changes$('metered').pipe(take(10), toArray()));
    await new Promise((resolve) => setTimeout(resolve, 200));
    await db.pool.query('INSERT INTO metered SELECT g, g FROM generate_series(1, 10) g');
    await live;
    await eventually(() => release.length === 2, 'two changes in flight');
    // An open writing transaction elsewhere.
    const blocker = await db.pool.connect();
    await blocker.query('BEGIN');
    await blocker.query('INSERT INTO metered VALUES (100, 0)');
    const { rows } = await blocker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');

    await eventually(async () => (await tide.deadLetters('metered-worker')).length === 1, 'a dead letter kept');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const text = await registry.metrics();
    expect(sample(text, 'pgtide_changes_delivered_total', { table: 'public.metered' })).toBe(20);
    expect(sample(text, 'pgtide_changes_read_total', { table: 'public.metered' })).toBeGreaterThanOrEqual(10);
    expect(sample(text, 'pgtide_log_queries_total')).toBeGreaterThan(0);
    expect(sample(text, 'pgtide_wakeups_total')).toBeGreaterThan(0);
    expect(sample(text, 'pgtide_listen_up')).toBe(1);
    expect(sample(text, 'pgtide_listen_reconnects_total')).toBe(0);
    expect(sample(text, 'pgtide_consumer_in_flight', { consumer: 'metered-worker' })).toBe(2);
    expect(sample(text, 'pgtide_consumer_lag_changes', { consumer: 'metered-worker' })).toBe(2);
    expect(sample(text, 'pgtide_consumer_lag_seconds', { consumer: 'metered-worker' })).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'pgtide_dead_letters', { consumer: 'metered-worker' })).toBe(1);
    expect(sample(text, 'pgtide_blocking_transactions')).toBe(1);
    expect(sample(text, 'pgtide_blocking_transaction_age_seconds', { pid: String(rows[0]!.pid), kind: 'open' })).toBeGreaterThanOrEqual(0);

    await blocker.query('ROLLBACK');
    blocker.release();
    for (const resolve of release) resolve();
    await eventually(async () => sample(await registry.metrics(), 'pgtide_consumer_lag_changes', { consumer: 'metered-worker' }) === 0, 'lag back to 0');
    // The LISTEN connection killed: it comes back by itself, and the metrics say so.
    await db.pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtide:listen' AND datname = current_database()`);
    await eventually(async () => {
      const now = await registry.metrics();
      return sample(now, 'pgtide_listen_reconnects_total') === 1 && sample(now, 'pgtide_listen_up') === 1;
    }, 'the LISTEN connection reconnected', 15_000);
    handled.unsubscribe();
    metrics.unregister();
    expect(await registry.metrics()).toBe('\n');
  });
});
