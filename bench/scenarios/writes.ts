// Write overhead of capture: single-row INSERT (1 and 4 clients), bulk INSERT of 10k rows
// per statement, and UPDATE of one column on 100k rows. Four tables of one definition are
// measured in the same run: unwatched (the target's baseline), with a bare trigger (the
// floor of any trigger-based capture, see bareCaptureSql), watched by pgtide with nobody
// reading (`pgtide`), and watched by pgtide with a live changes$ subscriber draining it in
// another process (`live`, bench/jobs/drain.ts), as in production. Their measurements
// alternate in short slices so that drift and the noise of other processes on the machine
// hit all alike. After each `live` slice the parent waits (untimed) until the subscriber
// has received every change of it, so its catching up never lands in another variant's
// slice; the subscriber's CPU over the slice and its drain is charged to the slice's rows.
import pg from 'pg';
import type { Tide } from '../../src/index.js';
import type { DrainArgs, Drained } from '../jobs/drain.js';
import { Job } from '../lib/jobs.js';
import { bareCaptureSql, connectTide, connectedClient, createTableSql, freshDatabase, insertOneSql, insertRangeSql } from '../lib/db.js';
import { cpuSince, serverCpu } from '../lib/cpu.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, summarize, type Summary } from '../lib/stats.js';

export type Variant = 'plain' | 'bare' | 'pgtide' | 'live';
export const variants: readonly Variant[] = ['plain', 'bare', 'pgtide', 'live'];

/** Per variant: rows/s (wall clock), rows per second of server CPU (all server processes), WAL bytes per row. */
export interface VariantRuns {
  readonly rate: Record<Variant, Summary>;
  readonly perCpuSecond: Record<Variant, Summary>;
  readonly walPerRow: Record<Variant, Summary>;
  /** The live subscriber: its CPU per change received (µs), and how long it took to catch up after a slice (ms). */
  readonly subscriber: { readonly cpuMicrosPerChange: Summary; readonly drainMs: Summary };
}

type Measure = 'rate' | 'perCpuSecond' | 'walPerRow';
type Collected = Record<Variant, Record<Measure, number[]>> & { subscriberCpu: number[]; drainMs: number[] };

/** A changes$ subscriber of the `live` table in its own process (bench/jobs/drain.ts). */
class LiveSubscriber {
  private sent = 0;

  private constructor(private readonly job: Job) {}

  static async start(url: string, table: string): Promise<LiveSubscriber> {
    const job = new Job('drain', { url, table } satisfies DrainArgs);
    await job.receive('ready');
    return new LiveSubscriber(job);
  }

  /** Waits until the subscriber has received every change written so far (`written` more now). */
  caughtUp(written = 0): Promise<Drained> {
    this.sent += written;
    this.job.send('until', this.sent);
    return this.job.receive<Drained>('reached');
  }

  async stop(): Promise<void> {
    this.job.send('stop');
    await this.job.result();
  }
}

/** Accumulates rows, wall ms, server CPU ms, WAL bytes per variant and the live subscriber's CPU over one run. */
class Tally {
  private readonly totals = new Map<Variant, { rows: number; ms: number; cpuMs: number; walBytes: number }>(
    variants.map((variant) => [variant, { rows: 0, ms: 0, cpuMs: 0, walBytes: 0 }]),
  );
  private subscriberMicros = 0;
  private subscriberChanges = 0;
  private readonly drains: number[] = [];

  constructor(
    private readonly postmaster: number,
    private readonly admin: pg.Client,
  ) {}

  /** Times `work` (which returns the rows it wrote); for `live`, then waits for `subscriber` to receive them. */
  async measure(variant: Variant, work: () => Promise<number>, subscriber?: LiveSubscriber): Promise<void> {
    const before = subscriber ? await subscriber.caughtUp() : undefined;
    const wal = await this.walPosition();
    const cpu = serverCpu(this.postmaster);
    const start = nowMs();
    const rows = await work();
    const end = nowMs();
    const total = this.totals.get(variant)!;
    total.ms += end - start;
    total.cpuMs += cpuSince(cpu, serverCpu(this.postmaster));
    total.walBytes += (await this.walPosition()) - wal;
    total.rows += rows;
    if (subscriber && before) {
      const after = await subscriber.caughtUp(rows);
      this.drains.push(nowMs() - end);
      this.subscriberMicros += after.cpuMicros - before.cpuMicros;
      this.subscriberChanges += after.count - before.count;
    }
  }

  record(into: Collected): void {
    for (const [variant, total] of this.totals) {
      if (total.rows === 0) continue;
      into[variant].rate.push(total.rows / (total.ms / 1000));
      into[variant].perCpuSecond.push(total.rows / (total.cpuMs / 1000));
      into[variant].walPerRow.push(total.walBytes / total.rows);
    }
    if (this.subscriberChanges > 0) into.subscriberCpu.push(this.subscriberMicros / this.subscriberChanges);
    if (this.drains.length > 0) into.drainMs.push(summarize(this.drains).median);
  }

  private async walPosition(): Promise<number> {
    const { rows } = await this.admin.query<{ bytes: string }>(`SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::text AS bytes`);
    return Number(rows[0]!.bytes);
  }
}

function collector(): Collected {
  const empty = () => ({ rate: [], perCpuSecond: [], walPerRow: [] });
  return { plain: empty(), bare: empty(), pgtide: empty(), live: empty(), subscriberCpu: [], drainMs: [] };
}

function summarizeRuns(runs: Collected): VariantRuns {
  const pick = (key: Measure) => Object.fromEntries(variants.map((variant) => [variant, summarize(runs[variant][key])])) as Record<Variant, Summary>;
  return {
    rate: pick('rate'),
    perCpuSecond: pick('perCpuSecond'),
    walPerRow: pick('walPerRow'),
    subscriber: { cpuMicrosPerChange: summarize(runs.subscriberCpu), drainMs: summarize(runs.drainMs) },
  };
}

interface Context {
  readonly url: string;
  readonly admin: pg.Client;
  readonly tide: Tide;
}

async function setUp(serverUrl: string, database: string): Promise<Context> {
  const url = await freshDatabase(serverUrl, database);
  const admin = await connectedClient(url);
  const tide = await connectTide(url);
  return { url, admin, tide };
}

async function tearDown(context: Context): Promise<void> {
  await context.tide.close();
  await context.admin.end();
}

/** (Re)creates the variant's table `<prefix>_<variant>` with its capture. */
async function createVariant(context: Context, prefix: string, variant: Variant): Promise<string> {
  const table = `${prefix}_${variant}`;
  await context.admin.query(`DROP TABLE IF EXISTS ${table}; ${createTableSql(table)}`);
  if (variant === 'bare') await context.admin.query(bareCaptureSql(table));
  if (variant === 'pgtide' || variant === 'live') await context.tide.watch(table);
  return table;
}

function rotate<T>(items: readonly T[], by: number): T[] {
  return items.map((_, index) => items[(index + by) % items.length]!);
}

/** Single-row autocommit INSERTs from `clientCount` connections, per variant. */
export async function singleRowInserts(server: BenchServer, settings: Settings, clientCount: number): Promise<VariantRuns> {
  const context = await setUp(server.url, `bench_insert_${clientCount}`);
  const tables = new Map<Variant, string>();
  for (const variant of variants) tables.set(variant, await createVariant(context, 'ins', variant));
  const clients = await Promise.all(Array.from({ length: clientCount }, () => connectedClient(context.url)));
  const subscriber = await LiveSubscriber.start(context.url, tables.get('live')!);
  let nextId = 1;
  const slice = async (variant: Variant, ms: number): Promise<number> => {
    const table = tables.get(variant)!;
    const text = insertOneSql(table);
    const deadline = nowMs() + ms;
    const counts = await Promise.all(
      clients.map(async (client) => {
        let count = 0;
        while (nowMs() < deadline) {
          await client.query({ name: `ins_${table}`, text, values: [nextId++] });
          count += 1;
        }
        return count;
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  };
  for (const variant of variants) {
    const rows = await slice(variant, settings.warmupMs);
    if (variant === 'live') await subscriber.caughtUp(rows);
  }
  // A production log has statistics (autoanalyze runs within a minute of writes), and
  // with them the planner's choices differ from a never-analyzed table's.
  await context.admin.query('ANALYZE pgtide.log, bare_log');
  const runs = collector();
  for (let run = 0; run < settings.runs; run += 1) {
    await context.admin.query('CHECKPOINT');
    const tally = new Tally(server.postmaster, context.admin);
    for (let index = 0; index < settings.insertSlices; index += 1) {
      for (const variant of rotate(variants, run + index)) {
        await tally.measure(variant, () => slice(variant, settings.insertSliceMs), variant === 'live' ? subscriber : undefined);
      }
    }
    tally.record(runs);
  }
  await subscriber.stop();
  await Promise.all(clients.map((client) => client.end()));
  await tearDown(context);
  return summarizeRuns(runs);
}

/** INSERT ... SELECT of 10k rows per statement, per variant; statements alternate between the variants. */
export async function bulkInserts(server: BenchServer, settings: Settings): Promise<VariantRuns> {
  const context = await setUp(server.url, 'bench_bulk');
  const batch = 10_000;
  const runs = collector();
  for (let run = -1; run < settings.runs; run += 1) {
    // Fresh tables and logs each run (pgtide refuses TRUNCATE of a watched table); run -1 warms up.
    const tables = new Map<Variant, string>();
    for (const variant of variants) tables.set(variant, await createVariant(context, 'bulk', variant));
    await context.admin.query('TRUNCATE pgtide.log, bare_log');
    await context.admin.query('CHECKPOINT');
    // A subscriber per run: the tables are new.
    const subscriber = await LiveSubscriber.start(context.url, tables.get('live')!);
    const tally = new Tally(server.postmaster, context.admin);
    const statements = run < 0 ? 1 : settings.bulkStatements;
    for (let index = 0; index < statements; index += 1) {
      for (const variant of rotate(variants, run + 1 + index)) {
        const table = tables.get(variant)!;
        const write = async () => {
          await context.admin.query({ name: `bulk_${variant}`, text: insertRangeSql(table), values: [index * batch + 1, (index + 1) * batch] });
          return batch;
        };
        await tally.measure(variant, write, variant === 'live' ? subscriber : undefined);
      }
    }
    await subscriber.stop();
    if (run >= 0) tally.record(runs);
  }
  await tearDown(context);
  return summarizeRuns(runs);
}

/** One UPDATE changing one (watched) column of all 100k rows, per variant. */
export async function wideUpdates(server: BenchServer, settings: Settings): Promise<VariantRuns> {
  const context = await setUp(server.url, 'bench_update');
  const { admin } = context;
  const rows = 100_000;
  const tables = new Map<Variant, string>();
  for (const variant of variants) {
    const table = await createVariant(context, 'upd', variant);
    tables.set(variant, table);
    await admin.query(insertRangeSql(table), [1, rows]);
  }
  const update = async (variant: Variant): Promise<number> => {
    const result = await admin.query(`UPDATE ${tables.get(variant)!} SET quota = quota + 1`);
    if (result.rowCount !== rows) throw new Error(`updated ${result.rowCount} rows, expected ${rows}`);
    return rows;
  };
  const prepare = async (variant: Variant): Promise<void> => {
    // The same starting point every time: dead versions vacuumed, an empty log, a fresh checkpoint.
    await admin.query(`VACUUM ANALYZE ${tables.get(variant)!}`);
    await admin.query('TRUNCATE pgtide.log, bare_log');
    await admin.query('CHECKPOINT');
  };
  const check = async (variant: Variant): Promise<void> => {
    if (variant === 'plain') return;
    const logged = await admin.query<{ count: string }>(`SELECT count(*) FROM ${variant === 'bare' ? 'bare_log' : 'pgtide.log'}`);
    if (Number(logged.rows[0]!.count) !== rows) throw new Error(`the ${variant} UPDATE logged ${logged.rows[0]!.count} rows`);
  };
  // Warm-up (skipped by --quick).
  if (!settings.quick) {
    for (const variant of variants) {
      await prepare(variant);
      await update(variant);
    }
  }
  const runs = collector();
  for (let run = 0; run < settings.runs; run += 1) {
    const tally = new Tally(server.postmaster, context.admin);
    for (const variant of rotate(variants, run)) {
      await prepare(variant);
      // Started after the log was emptied: the subscriber reads this UPDATE's changes only.
      const subscriber = variant === 'live' ? await LiveSubscriber.start(context.url, tables.get('live')!) : undefined;
      await tally.measure(variant, () => update(variant), subscriber);
      await subscriber?.stop();
      // Each variant logs one row per updated row.
      if (run === 0) await check(variant);
    }
    tally.record(runs);
  }
  await tearDown(context);
  return summarizeRuns(runs);
}
