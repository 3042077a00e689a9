// Write overhead of capture: single-row INSERT (1 and 4 clients), bulk INSERT of 10k rows
// per statement, and UPDATE of one column on 100k rows. Three tables of one definition are
// measured in the same run: unwatched (the target's baseline), with a bare trigger (the
// floor of any trigger-based capture, see bareCaptureSql) and watched by pgtide. Their
// measurements alternate in short slices so that drift and the noise of other processes
// on the machine hit all three alike.
import pg from 'pg';
import type { Tide } from '../../src/index.js';
import { bareCaptureSql, connectTide, connectedClient, createTableSql, freshDatabase, insertOneSql, insertRangeSql } from '../lib/db.js';
import { cpuSince, serverCpu } from '../lib/cpu.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, summarize, type Summary } from '../lib/stats.js';

export type Variant = 'plain' | 'bare' | 'pgtide';
export const variants: readonly Variant[] = ['plain', 'bare', 'pgtide'];

/** Per variant: rows/s (wall clock), and rows per second of server CPU (all server processes). */
export interface VariantRuns {
  readonly rate: Record<Variant, Summary>;
  readonly perCpuSecond: Record<Variant, Summary>;
}

/** Accumulates rows, wall ms and server CPU ms per variant over one run. */
class Tally {
  private readonly totals = new Map<Variant, { rows: number; ms: number; cpuMs: number }>(
    variants.map((variant) => [variant, { rows: 0, ms: 0, cpuMs: 0 }]),
  );

  constructor(private readonly postmaster: number) {}

  async measure(variant: Variant, work: () => Promise<number>): Promise<void> {
    const cpu = serverCpu(this.postmaster);
    const start = nowMs();
    const rows = await work();
    const total = this.totals.get(variant)!;
    total.ms += nowMs() - start;
    total.cpuMs += cpuSince(cpu, serverCpu(this.postmaster));
    total.rows += rows;
  }

  record(into: Record<Variant, { rate: number[]; perCpuSecond: number[] }>): void {
    for (const [variant, total] of this.totals) {
      into[variant].rate.push(total.rows / (total.ms / 1000));
      into[variant].perCpuSecond.push(total.rows / (total.cpuMs / 1000));
    }
  }
}

function collector(): Record<Variant, { rate: number[]; perCpuSecond: number[] }> {
  return { plain: { rate: [], perCpuSecond: [] }, bare: { rate: [], perCpuSecond: [] }, pgtide: { rate: [], perCpuSecond: [] } };
}

function summarizeRuns(runs: Record<Variant, { rate: number[]; perCpuSecond: number[] }>): VariantRuns {
  const pick = (key: 'rate' | 'perCpuSecond') =>
    ({ plain: summarize(runs.plain[key]), bare: summarize(runs.bare[key]), pgtide: summarize(runs.pgtide[key]) }) as Record<Variant, Summary>;
  return { rate: pick('rate'), perCpuSecond: pick('perCpuSecond') };
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
  if (variant === 'pgtide') await context.tide.watch(table);
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
  for (const variant of variants) await slice(variant, settings.warmupMs);
  const runs = collector();
  for (let run = 0; run < settings.runs; run += 1) {
    await context.admin.query('CHECKPOINT');
    const tally = new Tally(server.postmaster);
    for (let index = 0; index < settings.insertSlices; index += 1) {
      for (const variant of rotate(variants, run + index)) await tally.measure(variant, () => slice(variant, settings.insertSliceMs));
    }
    tally.record(runs);
  }
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
    const tally = new Tally(server.postmaster);
    const statements = run < 0 ? 1 : settings.bulkStatements;
    for (let index = 0; index < statements; index += 1) {
      for (const variant of rotate(variants, run + 1 + index)) {
        const table = tables.get(variant)!;
        await tally.measure(variant, async () => {
          await context.admin.query({ name: `bulk_${variant}`, text: insertRangeSql(table), values: [index * batch + 1, (index + 1) * batch] });
          return batch;
        });
      }
    }
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
    const logged = await admin.query<{ count: string }>(`SELECT count(*) FROM ${variant === 'pgtide' ? 'pgtide.log' : 'bare_log'}`);
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
    const tally = new Tally(server.postmaster);
    for (const variant of rotate(variants, run)) {
      await prepare(variant);
      await tally.measure(variant, () => update(variant));
      // Each variant logs one row per updated row.
      if (run === 0) await check(variant);
    }
    tally.record(runs);
  }
  await tearDown(context);
  return summarizeRuns(runs);
}
