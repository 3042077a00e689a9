import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { filter, map, tap } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { startPostgres, type EmbeddedPostgres } from '../../src/embedded.js';
import { connect, PgTideError, type Change, type ConnectOptions, type Tide } from '../../src/index.js';
import { eventually, quietLogger } from '../helpers.js';
import { DeliveryChecker, report, type Counts } from '../reliability/checker.js';

// A consumer resumed after its database was dumped (pg_dump -Fc) and restored
// (pg_restore) into another cluster gets every change it had not acknowledged, and
// nothing is skipped; where pgtide cannot decide, it fails with a typed error naming
// the cause and how to reset the consumer. Never a silent skip.
//
// Transaction ids only compare within one cluster, so the two clusters are pushed far
// apart first: restored txids far above the target's (a, c), or far below (b).
const binDir = process.env.PGTIDE_PG15_BIN ?? '/usr/lib/postgresql/15/bin';
const haveBinaries = ['postgres', 'initdb', 'pg_dump', 'pg_restore'].every((name) => existsSync(join(binDir, name)));
/** The embedded servers' password (src/embedded.ts); the URLs carry it too. */
const PASSWORD = 'postgres';
/** How far apart (in xids) the two clusters are pushed before a scenario writes. */
const XID_GAP = 3000;

interface Write {
  readonly key: number;
  readonly seq: number;
}

/** The (row, per-row sequence) a delivered change stands for: a delete is the row's last seq + 1. */
function writeOf(change: Change): Write {
  const key = Number(change.key['id']);
  if (change.op === 'delete') return { key, seq: Number((change.old as { seq: number }).seq) + 1 };
  return { key, seq: Number((change.new as { seq: number }).seq) };
}

function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(join(binDir, command), args, {
      env: { ...process.env, PGPASSWORD: PASSWORD },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(output) : reject(new Error(`${command} exited with ${code}: ${output}`))));
  });
}

/** The next xid the cluster will hand out, without taking one. */
async function nextXid(pool: pg.Pool): Promise<bigint> {
  const { rows } = await pool.query<{ xmax: string }>(`SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS xmax`);
  return BigInt(rows[0]!.xmax);
}

/** Consumes xids on `ahead` until it is XID_GAP ahead of `behind` (one committed transaction each). */
async function pushAhead(ahead: pg.Pool, behind: pg.Pool): Promise<{ ahead: bigint; behind: bigint }> {
  const missing = Number((await nextXid(behind)) + BigInt(XID_GAP) - (await nextXid(ahead)));
  if (missing > 0) {
    await ahead.query(`DO $$ BEGIN FOR i IN 1..${missing} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$`);
  }
  return { ahead: await nextXid(ahead), behind: await nextXid(behind) };
}

/**
 * One round of writes of every shape: a multi-row insert, a multi-row update (also of
 * `touch`, rows of earlier rounds), single-row inserts in one transaction, one row
 * updated twice in one transaction, a delete, an autocommit update. Returns the writes
 * that committed, in commit order; a failing transaction stops the round (the error is
 * returned with what committed before it).
 */
async function writeRound(pool: pg.Pool, base: number, touch: readonly number[]): Promise<{ writes: Write[]; error?: unknown }> {
  const writes: Write[] = [];
  /** Runs one statement; its RETURNING id, seq rows are the writes (a deleted row's is its last seq + 1). */
  const written = async (client: pg.Pool | pg.PoolClient, sql: string, values: unknown[], deleted = false) =>
    (await client.query<{ id: number; seq: number }>(sql, values)).rows.map((row) => ({ key: row.id, seq: row.seq + (deleted ? 1 : 0) }));
  const transaction = async (work: (client: pg.PoolClient) => Promise<Write[]>) => {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const done = await work(client);
      await client.query('COMMIT');
      writes.push(...done);
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
  };
  const bump = `UPDATE items SET seq = seq + 1 WHERE id = $1 RETURNING id, seq`;
  try {
    await transaction((client) =>
      written(client, `INSERT INTO items (id, seq) SELECT g, 1 FROM generate_series($1::int, $1::int + 4) g RETURNING id, seq`, [base]),
    );
    await transaction((client) =>
      written(client, `UPDATE items SET seq = seq + 1 WHERE id = ANY($1::int[]) RETURNING id, seq`, [[base, base + 1, base + 2, ...touch]]),
    );
    await transaction(async (client) => {
      const done: Write[] = [];
      for (let key = base + 5; key < base + 10; key += 1) {
        done.push(...(await written(client, `INSERT INTO items (id, seq) VALUES ($1, 1) RETURNING id, seq`, [key])));
      }
      return done;
    });
    await transaction(async (client) => [...(await written(client, bump, [base + 1])), ...(await written(client, bump, [base + 1]))]);
    await transaction((client) => written(client, `DELETE FROM items WHERE id = $1 RETURNING id, seq`, [base + 9], true));
    writes.push(...(await written(pool, bump, [base + 3])));
    return { writes };
  } catch (error) {
    return { writes, error };
  }
}

/** A durable (or plain) stream that records what it receives; `ack` decides which deliveries it acknowledges. */
function consume(
  tide: Tide,
  options: { consumer?: string; from?: 'beginning' },
  ack: (index: number) => boolean = () => true,
) {
  const received: Change[] = [];
  const state: { error?: unknown; completed: boolean; caughtUp: boolean } = { completed: false, caughtUp: false };
  const subscription = tide
    .events$('items', options)
    .pipe(
      tap((event) => {
        if (event.kind === 'caught-up') state.caughtUp = true;
      }),
      filter((event) => event.kind === 'change'),
      map((event) => event.change),
      // Only what `ack` picks reaches acknowledge(): the rest stays delivered but unacknowledged.
      filter((change) => ack(received.push(change) - 1)),
      acknowledge(),
    )
    .subscribe({ error: (error: unknown) => (state.error = error), complete: () => (state.completed = true) });
  return { received, state, unsubscribe: () => subscription.unsubscribe() };
}

/** What pgtide's own tables say, for the report when something goes wrong. */
async function diagnose(pool: pg.Pool): Promise<Record<string, unknown>> {
  const q = async (sql: string) => (await pool.query(sql)).rows;
  return {
    server: (await q(`SELECT system_identifier::text FROM pg_control_system()`))[0],
    itemsOid: (await q(`SELECT 'items'::regclass::oid::int8 AS oid`))[0],
    nextXid: (await q(`SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS xmax`))[0],
    eras: await q(`SELECT era, system_identifier::text, first_id FROM pgtide.eras ORDER BY era`),
    consumers: await q(`SELECT name, relids::int8[]::text AS relids, era, base::text, upto::text, after_id FROM pgtide.consumers ORDER BY name`),
    watched: await q(`SELECT relid::int8, schema_name, table_name FROM pgtide.watched ORDER BY relid`),
    log: await q(`SELECT relid::int8, pgtide.era_of(id) AS era, count(*)::int AS rows, min(id) AS first_id, max(id) AS last_id,
                         min(txid::text::int8) AS min_txid, max(txid::text::int8) AS max_txid
                    FROM pgtide.log GROUP BY 1, 2 ORDER BY 2, 1`),
  };
}

describe.runIf(haveBinaries)('a database dumped and restored into another cluster (PostgreSQL 15, pg_dump -Fc / pg_restore)', () => {
  let source: EmbeddedPostgres; // "A"
  let target: EmbeddedPostgres; // "B"
  let sourceAdmin: pg.Pool;
  let targetAdmin: pg.Pool;
  let dumps: string;
  const pools: pg.Pool[] = [];
  const tides: Tide[] = [];
  const summary: Counts[] = [];

  beforeAll(async () => {
    [source, target] = await Promise.all([
      startPostgres({ binDir, settings: { fsync: 'off' } }),
      startPostgres({ binDir, settings: { fsync: 'off' } }),
    ]);
    sourceAdmin = new pg.Pool({ connectionString: source.connectionString, max: 2 });
    targetAdmin = new pg.Pool({ connectionString: target.connectionString, max: 2 });
    dumps = mkdtempSync(join(tmpdir(), 'pgtide-dump-'));
  });
  afterAll(async () => {
    await Promise.all(tides.map((tide) => tide.close().catch(() => undefined)));
    await Promise.all(pools.map((pool) => pool.end().catch(() => undefined)));
    await sourceAdmin?.end();
    await targetAdmin?.end();
    await Promise.all([source?.destroy(), target?.destroy()]);
    if (dumps) rmSync(dumps, { recursive: true, force: true });
    if (summary.length > 0) console.table(summary);
  });

  const poolFor = (url: string) => {
    const pool = new pg.Pool({ connectionString: url, max: 4 });
    pool.on('error', () => undefined);
    pools.push(pool);
    return pool;
  };
  const tideFor = async (url: string, options: Omit<ConnectOptions, 'connectionString' | 'pool'> = {}) => {
    const tide = await connect({ connectionString: url, logger: quietLogger, pruneInterval: 0, pollInterval: 250, ...options });
    tides.push(tide);
    return tide;
  };

  /**
   * The whole story for one scenario: changes and two consumers on A, more changes on A
   * that no consumer saw, dump, restore into B, (app writes on B), consumers resumed on
   * B, live changes on B.
   */
  async function scenario(name: string, options: { readonly pushAheadOn: 'source' | 'target'; readonly appWritesFirst: boolean }) {
    const database = `app_${name}`;
    const problems: string[] = [];
    const gap =
      options.pushAheadOn === 'source' ? await pushAhead(sourceAdmin, targetAdmin) : await pushAhead(targetAdmin, sourceAdmin);
    console.log(`[${name}] next xid before writing: ${options.pushAheadOn} ${gap.ahead}, the other ${gap.behind}`);

    // --- On A: the table, its first changes (W1), two durable consumers.
    await sourceAdmin.query(`CREATE DATABASE ${database}`);
    const sourceUrl = source.urlFor(database);
    const sourcePool = poolFor(sourceUrl);
    await sourcePool.query(`CREATE TABLE items (id int PRIMARY KEY, seq int NOT NULL)`);
    const tideA = await tideFor(sourceUrl);
    await tideA.watch('items');
    const w1: Write[] = [];
    for (const [base, touch] of [[100, []], [200, [100]]] as const) {
      const round = await writeRound(sourcePool, base, touch);
      if (round.error) throw round.error;
      w1.push(...round.writes);
    }
    // 'c' acknowledges every change of W1 (its position is between batches); 'm' only the
    // first half: it leaves changes delivered but unacknowledged, its position mid-batch.
    const half = Math.floor(w1.length / 2);
    const onA = {
      c: consume(tideA, { consumer: 'c', from: 'beginning' }),
      m: consume(tideA, { consumer: 'm', from: 'beginning' }, (index) => index < half),
    };
    await eventually(
      () => Object.values(onA).every((stream) => stream.state.caughtUp && stream.received.length === w1.length),
      'both consumers received W1 on A',
    );
    for (const stream of Object.values(onA)) expect(stream.state.error).toBeUndefined();
    await tideA.close(); // saves both positions

    // --- On A, after the consumers stopped: changes they never saw (W2).
    const w2: Write[] = [];
    for (const [base, touch] of [[300, [100, 101, 200]], [400, [300, 201]]] as const) {
      const round = await writeRound(sourcePool, base, touch);
      if (round.error) throw round.error;
      w2.push(...round.writes);
    }
    const sourceState = await diagnose(sourcePool);

    // --- Dump A, restore into a new database on B.
    const file = join(dumps, `${database}.dump`);
    await run('pg_dump', ['-Fc', '-f', file, '-d', sourceUrl]);
    await targetAdmin.query(`CREATE DATABASE ${database}`);
    const targetUrl = target.urlFor(database);
    await run('pg_restore', ['--exit-on-error', '-d', targetUrl, file]);
    const targetPool = poolFor(targetUrl);

    // --- (c) An application writes on B before any Tide connects.
    const w3: Write[] = [];
    if (options.appWritesFirst) {
      const round = await writeRound(targetPool, 500, [100, 300]);
      w3.push(...round.writes);
      if (round.error) problems.push(`an application write on B before any Tide connected failed: ${String(round.error)}`);
    }

    // --- On B: the consumers resume; a from:'beginning' stream reads the whole log.
    const tideB = await tideFor(targetUrl, { pageSize: 5 });
    const onB = {
      c: consume(tideB, { consumer: 'c' }),
      m: consume(tideB, { consumer: 'm' }),
      all: consume(tideB, { from: 'beginning' }),
    };
    await eventually(
      () => Object.values(onB).every((stream) => stream.state.caughtUp || stream.state.error !== undefined),
      'the streams on B caught up (or failed)',
    ).catch((error: unknown) => problems.push(String(error)));

    // --- Live changes on B (W3).
    for (const [base, touch] of [[600, [100, 200, 300]], [700, [400, 600]]] as const) {
      const round = await writeRound(targetPool, base, touch);
      w3.push(...round.writes);
      if (round.error) problems.push(`a write on B after the Tide connected failed: ${String(round.error)}`);
    }

    // Expected: 'c' everything after W1; 'm' everything after the first half of W1; the
    // from:'beginning' stream everything. What each had acknowledged on A is session 0.
    const everything = [...w1, ...w2, ...w3];
    const checkers = {
      c: new DeliveryChecker(`${name}: consumer c (acknowledged all of W1 on A)`),
      m: new DeliveryChecker(`${name}: consumer m (acknowledged half of W1 on A, mid-batch)`),
      all: new DeliveryChecker(`${name}: from 'beginning' on B`),
    };
    for (const checker of Object.values(checkers)) for (const write of everything) checker.produce(write.key, write.seq);
    for (const change of onA.c.received) checkers.c.deliver(writeOf(change).key, writeOf(change).seq);
    for (const change of onA.m.received.slice(0, half)) checkers.m.deliver(writeOf(change).key, writeOf(change).seq);
    checkers.c.newSession();
    checkers.m.newSession();

    const allDelivered = () =>
      Object.entries(onB).every(([key, stream]) => {
        if (stream.state.error !== undefined) return true;
        const seen = new Set(stream.received.map((change) => `${writeOf(change).key}#${writeOf(change).seq}`));
        const before = key === 'c' ? onA.c.received : key === 'm' ? onA.m.received.slice(0, half) : [];
        for (const change of before) seen.add(`${writeOf(change).key}#${writeOf(change).seq}`);
        return everything.every((write) => seen.has(`${write.key}#${write.seq}`));
      });
    await eventually(allDelivered, 'every expected change delivered on B', 8_000).catch((error: unknown) =>
      problems.push(String(error)),
    );
    await new Promise((resolve) => setTimeout(resolve, 300)); // late duplicates would show here
    for (const [key, stream] of Object.entries(onB)) {
      for (const change of stream.received) checkers[key as keyof typeof checkers].deliver(writeOf(change).key, writeOf(change).seq);
    }

    console.log(`[${name}] W1 ${w1.length}, W2 ${w2.length} (never seen by a consumer), W3 ${w3.length} (written on B)`);
    console.log(
      `[${name}] received on B: c ${onB.c.received.length} (expected ${w2.length + w3.length}), ` +
        `m ${onB.m.received.length} (expected ${w1.length - half + w2.length + w3.length}), all ${onB.all.received.length} (expected ${everything.length})`,
    );
    const results: Record<string, Counts> = {};
    for (const [key, checker] of Object.entries(checkers)) {
      const counts = report(checker);
      summary.push(counts);
      results[key] = counts;
      const stream = onB[key as keyof typeof onB];
      const error = stream.state.error;
      if (error !== undefined) {
        // Refusing is allowed where pgtide cannot decide, but only with a typed error that
        // names the cause (the restore into another cluster) and how to reset the consumer.
        const described =
          error instanceof PgTideError
            ? `PgTideError ${error.code}: ${error.message}`
            : `untyped error: ${String(error)}`;
        console.log(`[${name}] ${key} failed on B with ${described}`);
        const typedAndHelpful =
          error instanceof PgTideError &&
          /\brestor|\bcluster\b|system.identifier|\bera\b/i.test(error.message) &&
          /dropConsumer/.test(error.message);
        if (!typedAndHelpful) problems.push(`${key}: stream failed without naming the restore and how to reset: ${described}`);
        continue;
      }
      if (counts.lost > 0) problems.push(`${key}: ${counts.lost} change(s) silently skipped`);
      if (counts.duplicates > 0) problems.push(`${key}: ${counts.duplicates} acknowledged change(s) delivered again after a clean close`);
      if (counts.outOfOrder > 0) problems.push(`${key}: ${counts.outOfOrder} change(s) out of per-row order`);
      if (checker.problems.some((problem) => problem.startsWith('delivered but never committed'))) {
        problems.push(`${key}: ${checker.problems.join('; ')}`);
      }
    }
    // The log on B holds every change exactly once, and the from:'beginning' stream saw each.
    const logRows = Number((await targetPool.query(`SELECT count(*) AS n FROM pgtide.log`)).rows[0].n);
    if (logRows !== everything.length) problems.push(`the log on B has ${logRows} rows for ${everything.length} committed changes`);
    const beginningIds = onB.all.received.map((change) => change.id);
    if (new Set(beginningIds).size !== beginningIds.length) problems.push(`all: a log id was delivered twice`);

    const targetState = await diagnose(targetPool);
    if (problems.length > 0) {
      console.log(`[${name}] problems:\n  ${problems.join('\n  ')}`);
      console.log(`[${name}] on A before the dump:`, JSON.stringify(sourceState));
      console.log(`[${name}] on B at the end:`, JSON.stringify(targetState));
    }
    await tideB.close();
    return { problems, results };
  }

  it('(a) restored txids far above the new cluster\'s: resumed consumers get every unacknowledged change, then live ones', async () => {
    const { problems } = await scenario('a', { pushAheadOn: 'source', appWritesFirst: false });
    expect(problems).toEqual([]);
  });

  it('(b) restored txids far below the new cluster\'s: the same', async () => {
    const { problems } = await scenario('b', { pushAheadOn: 'target', appWritesFirst: false });
    expect(problems).toEqual([]);
  });

  it('(c) an application writes on the restored database before any Tide connects: still nothing skipped', async () => {
    const { problems } = await scenario('c', { pushAheadOn: 'source', appWritesFirst: true });
    expect(problems).toEqual([]);
  });
});
