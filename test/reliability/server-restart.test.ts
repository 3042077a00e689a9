import pg from 'pg';
import { filter, map, tap } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { startPostgres, type EmbeddedPostgres } from '../../src/embedded.js';
import { connect, PgTideError, type Change, type Tide, type TideStatus } from '../../src/index.js';
import type { Logger } from '../../src/types.js';
import { eventually } from '../helpers.js';
import { DeliveryChecker, report } from './checker.js';

const table = 'restart_rows';
let server: EmbeddedPostgres;
let admin: pg.Pool;

beforeAll(async () => {
  // This file's own server: it is stopped and started under the stream.
  server = await startPostgres({ settings: { fsync: 'off' } });
  admin = new pg.Pool({ connectionString: server.connectionString, max: 2 });
  admin.on('error', () => undefined); // idle connections die with the server; new ones are made
  await admin.query(`CREATE TABLE ${table} (id int PRIMARY KEY, seq int NOT NULL DEFAULT 0)`);
});
afterAll(async () => {
  await admin?.end();
  await server?.destroy();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Collects what pgtide logs (retries are expected here) instead of printing each line. */
function collectingLogger(): Logger & { readonly lines: string[] } {
  const lines: string[] = [];
  const keep = (level: string) => (message: string) => void lines.push(`${level}: ${message}`);
  return { lines, debug: () => undefined, info: keep('info'), warn: keep('warn'), error: keep('error') };
}

/** A durable consumer stream (a group member with `group`) that acknowledges every change it receives. */
function consume(tide: Tide, consumer: string, group = false) {
  const changes: Change[] = [];
  const state: { error?: unknown; completed: boolean; caughtUp: boolean } = { completed: false, caughtUp: false };
  const subscription = tide
    .events$(table, group ? { consumer, group: { partitions: 4 } } : { consumer })
    .pipe(
      tap((event) => {
        if (event.kind === 'caught-up') state.caughtUp = true;
      }),
      filter((event) => event.kind === 'change'),
      map((event) => event.change),
      tap((change) => changes.push(change)),
      acknowledge(),
    )
    .subscribe({ error: (error: unknown) => (state.error = error), complete: () => (state.completed = true) });
  return { changes, state, unsubscribe: () => subscription.unsubscribe() };
}

describe('the PostgreSQL server stopped and started under a durable consumer', () => {
  it.each([
    ['a consumer', false],
    ['a consumer group member', true],
  ])('%s recovers by itself after a fast and an immediate (crash) shutdown, losing nothing', async (_what, group) => {
    const logger = collectingLogger();
    const tide = await connect({
      connectionString: server.connectionString,
      logger,
      pruneInterval: 0,
      pollInterval: 200,
      reconnectTimeout: 120_000,
    });
    await tide.watch(table);
    // Each variant counts what the table holds: start it empty.
    await admin.query(`TRUNCATE ${table}`);
    const consumer = group ? 'restarting-group' : 'restarter';
    const checker = new DeliveryChecker(`server restart (fast + immediate)${group ? ', group member' : ''}`);
    const seen: TideStatus[] = [];
    const statuses = tide.status$.subscribe((status) => seen.push(status));
    const stream = consume(tide, consumer, group);
    await eventually(() => stream.state.caughtUp, 'caught up');

    // Writers insert unique keys, reconnecting whenever the server is away. A write that
    // failed may still have committed (the server went away mid-commit): the table decides.
    let writing = true;
    const confirmed = new Set<number>();
    let failedAttempts = 0;
    const writers = Array.from({ length: 3 }, async (_, writer) => {
      let client: pg.Client | undefined;
      for (let n = 0; writing; n += 1) {
        const id = writer * 1_000_000 + n;
        try {
          if (!client) {
            client = new pg.Client({ connectionString: server.connectionString });
            client.on('error', () => undefined);
            await client.connect();
          }
          await client.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
          confirmed.add(id);
          await sleep(2);
        } catch {
          failedAttempts += 1;
          void client?.end().catch(() => undefined);
          client = undefined;
          await sleep(50);
        }
      }
      await client?.end().catch(() => undefined);
    });

    const phases: Array<{ phase: string; confirmed: number }> = [];
    const phase = (name: string) => phases.push({ phase: name, confirmed: confirmed.size });
    await sleep(800);
    phase('before fast stop');
    await server.stop('fast');
    await sleep(1_000);
    await server.start();
    phase('restarted after fast stop');
    await sleep(1_500);
    phase('before immediate stop');
    await server.stop('immediate');
    await sleep(1_000);
    await server.start();
    phase('restarted after immediate stop');
    await sleep(1_500);
    writing = false;
    await Promise.all(writers);
    phase('writers done');

    // Ground truth: what the table holds. Every confirmed write must be there.
    const { rows } = await admin.query(`SELECT id FROM ${table}`);
    const stored = new Set(rows.map((row: { id: number }) => row.id));
    expect([...confirmed].filter((id) => !stored.has(id))).toEqual([]);
    for (const id of stored) checker.produce(id);

    await eventually(
      () => {
        for (const change of stream.changes.splice(0)) checker.deliver(change.key['id'] as number);
        return checker.complete() || stream.state.error !== undefined;
      },
      'every stored row delivered',
      15_000,
    ).catch((error: unknown) => {
      console.log('pgtide log while waiting:', logger.lines.slice(-30));
      throw error;
    });
    await sleep(200);
    for (const change of stream.changes.splice(0)) checker.deliver(change.key['id'] as number);
    const counts = report(checker);
    console.log('server restart phases:', phases, {
      failedWriteAttempts: failedAttempts,
      failedButCommitted: stored.size - confirmed.size,
      pgtideLogLines: logger.lines.length,
    });
    expect(stream.state.error).toBeUndefined();
    expect(stream.state.completed).toBe(false);
    if (group) {
      // The member's session (its partition locks) dies with the server: it joins again
      // and gets again what it had processed but not saved (each key is written once, so
      // a redelivery is also counted out of order).
      expect(counts.lost).toBe(0);
      expect(counts.outOfOrder).toBeLessThanOrEqual(counts.duplicates);
      expect(logger.lines.some((line) => line.includes('joining again'))).toBe(true);
    } else {
      expect(checker.problems).toEqual([]);
      // One stream lifetime: exactly once, in spite of the restarts.
      expect(counts).toMatchObject({ lost: 0, outOfOrder: 0, duplicates: 0 });
    }
    // Writes landed after each restart, so the stream really followed the new server.
    expect(phases[2]!.confirmed).toBeGreaterThan(phases[1]!.confirmed);
    expect(phases[4]!.confirmed).toBeGreaterThan(phases[3]!.confirmed);
    // The consumer's position was saved on the restarted server too.
    await eventually(
      async () => (await tide.consumers()).find((info) => info.name === consumer)?.lagChanges === 0,
      'position saved after the restarts',
    );
    // status$ told the story: LISTEN up, down and up again; the stream live, then reconnecting, then live again.
    const listen = seen.map((status) => status.listen).filter((state, index, all) => state !== all[index - 1]);
    // connect() resolves once LISTEN is up.
    expect(listen[0]).toBe('up');
    expect(listen).toContain('down');
    expect(listen.at(-1)).toBe('up');
    const phasesSeen = seen.flatMap((status) => status.streams.filter((entry) => entry.consumer?.startsWith(consumer)).map((entry) => entry.phase));
    expect(phasesSeen).toContain('live');
    expect(phasesSeen).toContain('reconnecting');
    expect(seen.at(-1)!.streams.filter((entry) => entry.consumer?.startsWith(consumer)).every((entry) => entry.phase === 'live')).toBe(true);
    statuses.unsubscribe();
    stream.unsubscribe();
    await tide.close();
  }, 40_000);

  it('errors with CONNECTION_LOST once the server stays away longer than reconnectTimeout', async () => {
    const logger = collectingLogger();
    const tide = await connect({
      connectionString: server.connectionString,
      logger,
      pruneInterval: 0,
      pollInterval: 200,
      reconnectTimeout: 1_500,
    });
    const stream = consume(tide, 'abandoned');
    await eventually(() => stream.state.caughtUp, 'caught up');
    await admin.query(`INSERT INTO ${table} (id) VALUES (-1)`);
    await eventually(() => stream.changes.length === 1, 'the stream is live');

    const stoppedAt = Date.now();
    await server.stop('fast'); // and left down
    await eventually(() => stream.state.error !== undefined || stream.state.completed, 'the stream gives up', 15_000);
    const after = Date.now() - stoppedAt;
    console.log(`stream failed ${after} ms after the server went away (reconnectTimeout 1500 ms)`);
    expect(stream.state.completed).toBe(false);
    expect(stream.state.error).toBeInstanceOf(PgTideError);
    expect(stream.state.error).toMatchObject({ code: 'CONNECTION_LOST' });
    expect(after).toBeGreaterThanOrEqual(1_500);
    await tide.close();
  }, 30_000);
});
