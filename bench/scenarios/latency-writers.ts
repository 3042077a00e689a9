// Commit -> changes$ emission latency when other transactions are around (issue 9):
//  - latency-4w: 4 writer connections at 1k commits/s in total (250/s each, paced from
//    one start, so their commits meet: the NOTIFY of all but one is skipped), against
//    1 writer at the same total rate;
//  - latency-blocked: 1 writer at a modest rate while an unrelated writing transaction is
//    held open in another database of the same server, against nothing open.
// The writers run in this process; the subscriber (one events$ stream, open for the
// whole row) in its own (bench/jobs/arrivals.ts). Latency is measured from the moment
// each INSERT is sent to its emission, on the machine's monotonic clock.
import type pg from 'pg';
import type { ArrivalsArgs, ArrivalsResult, Command } from '../jobs/arrivals.js';
import { connectTide, connectedClient, createTableSql, dropDatabase, freshDatabase, insertOneSql } from '../lib/db.js';
import { Job } from '../lib/jobs.js';
import { paced } from '../lib/pacer.js';
import type { Figure, Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, quantile, summarize } from '../lib/stats.js';

const table = 'lat_rows';

interface Run<Mode extends string> {
  readonly mode: Mode;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly sent: number;
  /** Changes that never arrived (within 10 s of the end of the writes). */
  readonly lost: number;
  /** Write rate achieved (commits/s, all writers). */
  readonly rate: number;
  /** latency-blocked: changes delivered while the unrelated transaction was still open. */
  readonly whileBlocked?: number;
}

/** Writers in this process, the arrivals job in another, send times by row id. */
class Rig {
  private nextId = 1;
  private readonly sentAt: Float64Array;

  private constructor(
    readonly job: Job,
    readonly writers: pg.Client[],
    maxId: number,
  ) {
    this.sentAt = new Float64Array(maxId + 1);
  }

  static async start(url: string, writerCount: number, maxId: number): Promise<Rig> {
    const admin = await connectedClient(url);
    await admin.query(createTableSql(table));
    await admin.end();
    const tide = await connectTide(url);
    await tide.watch(table);
    await tide.close();
    const job = new Job('arrivals', { url, table, maxId } satisfies ArrivalsArgs);
    try {
      await job.receive('ready');
      const writers = await Promise.all(Array.from({ length: writerCount }, () => connectedClient(url)));
      return new Rig(job, writers, maxId);
    } catch (error) {
      job.kill();
      throw error;
    }
  }

  /** Rows written so far: the table's rows in the log (reads cost more as it grows, see bench/README.md). */
  get written(): number {
    return this.nextId - 1;
  }

  private command(command: Command): void {
    this.job.send('command', command);
  }

  /**
   * `writerCount` writers insert single rows, each paced at rate / writerCount from the
   * same start. Returns the ids written and the achieved rate.
   */
  async write(writerCount: number, rate: number, durationMs: number): Promise<{ from: number; to: number; rate: number }> {
    const perWriter = Math.max(1, Math.round(((durationMs / 1000) * rate) / writerCount));
    const from = this.nextId;
    const query = { name: 'lat_insert', text: insertOneSql(table) };
    const start = nowMs();
    await Promise.all(
      this.writers.slice(0, writerCount).map((writer) =>
        paced(perWriter, rate / writerCount, async () => {
          const id = this.nextId++;
          this.sentAt[id] = nowMs();
          await writer.query({ ...query, values: [id] });
        }),
      ),
    );
    const seconds = (nowMs() - start) / 1000;
    const to = this.nextId - 1;
    return { from, to, rate: (to - from + 1) / seconds };
  }

  /** Whether every change up to `to` arrived within `timeoutMs`. */
  async waitFor(to: number, timeoutMs: number): Promise<boolean> {
    this.command({ kind: 'wait', to, timeoutMs });
    return (await this.job.receive<{ complete: boolean }>('waited')).complete;
  }

  /** Latency of every change in from..to that arrived, and how many did not. */
  async latencies(from: number, to: number): Promise<{ samples: Float64Array; lost: number }> {
    this.command({ kind: 'collect', from, to });
    const arrived = await this.job.receive<Float64Array>('arrivals');
    const samples: number[] = [];
    for (let index = 0; index < arrived.length; index += 1) {
      if (!Number.isNaN(arrived[index]!)) samples.push(arrived[index]! - this.sentAt[from + index]!);
    }
    return { samples: Float64Array.from(samples), lost: arrived.length - samples.length };
  }

  /** Arrivals up to `before` (ms on the shared clock) among from..to. */
  async arrivedBefore(from: number, to: number, before: number): Promise<number> {
    this.command({ kind: 'collect', from, to });
    const arrived = await this.job.receive<Float64Array>('arrivals');
    return arrived.filter((at) => at <= before).length;
  }

  async stop(): Promise<ArrivalsResult> {
    await Promise.all(this.writers.map((writer) => writer.end()));
    this.command({ kind: 'stop' });
    try {
      return await this.job.result<ArrivalsResult>();
    } finally {
      this.job.kill();
    }
  }
}

function summaryOf<Mode extends string>(mode: Mode, samples: Float64Array, sent: number, lost: number, rate: number): Run<Mode> {
  return { mode, p50: quantile(samples, 0.5), p99: quantile(samples, 0.99), max: quantile(samples, 1), sent, lost, rate };
}

/** The p50, p99 and max figures of `mode` against each baseline mode, runs paired in order. */
function latencyFigures<Mode extends string>(runs: ReadonlyArray<Run<Mode>>, mode: Mode, baselines: ReadonlyArray<[Mode, string]>): Figure[] {
  const of = (wanted: Mode) => runs.filter((run) => run.mode === wanted);
  return (['p50', 'p99', 'max'] as const).map((metric) => {
    const measured = of(mode);
    return {
      metric: `${metric} from send`,
      unit: 'ms',
      pgtide: summarize(measured.map((run) => run[metric])),
      baselines: baselines.map(([base, name]) => {
        const other = of(base);
        return {
          name,
          value: summarize(other.map((run) => run[metric])),
          ratio: summarize(measured.map((run, index) => run[metric] / other[index]![metric])),
        };
      }),
    };
  });
}

function rateNotes<Mode extends string>(runs: ReadonlyArray<Run<Mode>>, wanted: (mode: Mode) => number): string[] {
  const notes: string[] = [];
  const lost = runs.filter((run) => run.lost > 0);
  if (lost.length > 0) notes.push(`${lost.length} run(s) did not receive every change within 10 s: ${JSON.stringify(lost)}`);
  const slow = runs.filter((run) => run.rate < 0.9 * wanted(run.mode));
  if (slow.length > 0) notes.push(`${slow.length} run(s) wrote below 90% of the intended rate: ${JSON.stringify(slow.map((run) => [run.mode, Math.round(run.rate)]))}`);
  return notes;
}

type WritersMode = '4 writers' | '1 writer';

export async function latency4wRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await freshDatabase(server.url, 'bench_latency_4w');
  const rate = settings.latencyRate;
  const maxId = Math.ceil(((settings.latencyMs + settings.warmupMs) / 1000) * rate * 2 * (settings.runs + 1)) + 10_000;
  const rig = await Rig.start(url, 4, maxId);
  const runs: Array<Run<WritersMode>> = [];
  let subscriber: ArrivalsResult;
  try {
    const measure = async (mode: WritersMode, durationMs: number): Promise<Run<WritersMode>> => {
      const written = await rig.write(mode === '4 writers' ? 4 : 1, rate, durationMs);
      await rig.waitFor(written.to, 10_000);
      const { samples, lost } = await rig.latencies(written.from, written.to);
      return summaryOf(mode, samples, written.to - written.from + 1, lost, written.rate);
    };
    const modes: WritersMode[] = ['4 writers', '1 writer'];
    for (const mode of modes) await measure(mode, settings.warmupMs);
    for (let run = 0; run < settings.runs; run += 1) {
      for (let index = 0; index < modes.length; index += 1) runs.push(await measure(modes[(run + index) % modes.length]!, settings.latencyMs));
    }
  } finally {
    subscriber = await rig.stop();
  }
  const figures = latencyFigures(runs, '4 writers', [['1 writer', `1 writer at ${rate / 1000}k/s`]]);
  const notes = rateNotes(runs, () => rate);
  if (subscriber.duplicates > 0) notes.push(`${subscriber.duplicates} change(s) arrived twice`);
  notes.push(`the table's log held ${rig.written} rows at the end (runs in order: ${runs.map((run) => `${run.mode} p50 ${run.p50.toFixed(2)}`).join(', ')})`);
  const p99 = figures[1]!.pgtide.median;
  return {
    id: 'latency-4w',
    scenario: `commit -> changes$ emission, 4 writers at ${rate / 1000}k commits/s in total`,
    figures,
    target: 'p99 <= 10 ms',
    met: p99 <= 10 && runs.every((run) => run.lost === 0) && subscriber.duplicates === 0,
    notes,
    extra: {
      maxLatency: Object.fromEntries(['4 writers', '1 writer'].map((mode) => [mode, summarize(runs.filter((run) => run.mode === mode).map((run) => run.max))])),
      achievedRate: summarize(runs.map((run) => run.rate)),
      logRows: rig.written,
      subscriber,
      runs,
    },
  };
}

type BlockedMode = 'blocked' | 'clear';

export async function latencyBlockedRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await freshDatabase(server.url, 'bench_latency_blocked');
  // The unrelated transaction's own database, with a table of its own.
  const otherName = 'bench_latency_blocked_other';
  const otherUrl = await freshDatabase(server.url, otherName);
  const rate = settings.blockedRate;
  // How long the unrelated transaction stays open after the last write when changes are missing.
  const graceMs = 1000;
  const maxId = Math.ceil(((settings.blockedMs + settings.warmupMs) / 1000) * rate * 2 * (settings.runs + 1)) + 10_000;
  const blocker = await connectedClient(otherUrl);
  await blocker.query('CREATE TABLE other_rows (id bigint PRIMARY KEY, note text)');
  const observer = await connectedClient(url);
  const rig = await Rig.start(url, 1, maxId);
  const runs: Array<Run<BlockedMode>> = [];
  const evidence: Array<{ xid: string; runningInBenchSnapshot: boolean }> = [];
  let subscriber: ArrivalsResult;
  let blockerRow = 0;
  try {
    const measure = async (mode: BlockedMode, durationMs: number): Promise<Run<BlockedMode>> => {
      let xid: string | undefined;
      if (mode === 'blocked') {
        await blocker.query('BEGIN');
        await blocker.query('INSERT INTO other_rows (id, note) VALUES ($1, $2)', [++blockerRow, 'held open for the run']);
        xid = (await blocker.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid')).rows[0]!.xid;
      }
      const written = await rig.write(1, rate, durationMs);
      if (xid !== undefined) {
        // Snapshots are server-wide: once later transactions have committed, the bench
        // database's snapshot lists the other database's transaction as running (xip).
        const { rows } = await observer.query<{ running: boolean }>(
          'SELECT EXISTS (SELECT FROM pg_snapshot_xip(pg_current_snapshot()) x WHERE x = $1::xid8) AS running',
          [xid],
        );
        evidence.push({ xid, runningInBenchSnapshot: rows[0]!.running });
      }
      // The same wait in both modes; in 'blocked' the transaction is open throughout it.
      await rig.waitFor(written.to, graceMs);
      const releasedAt = nowMs();
      if (mode === 'blocked') await blocker.query('COMMIT');
      await rig.waitFor(written.to, 10_000);
      const { samples, lost } = await rig.latencies(written.from, written.to);
      const whileBlocked = mode === 'blocked' ? await rig.arrivedBefore(written.from, written.to, releasedAt) : undefined;
      return { ...summaryOf(mode, samples, written.to - written.from + 1, lost, written.rate), ...(whileBlocked === undefined ? {} : { whileBlocked }) };
    };
    const modes: BlockedMode[] = ['blocked', 'clear'];
    for (const mode of modes) await measure(mode, settings.warmupMs);
    for (let run = 0; run < settings.runs; run += 1) {
      for (let index = 0; index < modes.length; index += 1) runs.push(await measure(modes[(run + index) % modes.length]!, settings.blockedMs));
    }
  } finally {
    subscriber = await rig.stop();
    await blocker.query('ROLLBACK').catch(() => undefined);
    await blocker.end();
    await observer.end();
    await dropDatabase(server.url, otherName);
  }
  const figures = latencyFigures(runs, 'blocked', [['clear', 'nothing open']]);
  const blocked = runs.filter((run) => run.mode === 'blocked');
  const delivered = summarize(blocked.map((run) => (100 * run.whileBlocked!) / run.sent));
  figures.push({ metric: 'delivered while it was open', unit: '%', pgtide: delivered, baselines: [] });
  const notes = rateNotes(runs, () => rate);
  if (subscriber.duplicates > 0) notes.push(`${subscriber.duplicates} change(s) arrived twice`);
  notes.push(`the table's log held ${rig.written} rows at the end`);
  if (evidence.some((seen) => !seen.runningInBenchSnapshot)) notes.push(`the unrelated transaction was not running in the bench database's snapshot: ${JSON.stringify(evidence)}`);
  const [p50, p99] = figures;
  return {
    id: 'latency-blocked',
    scenario: `commit -> changes$ emission at ${rate}/s, a writing transaction open in another database`,
    figures,
    target: 'within 2x of nothing open',
    met:
      p50!.baselines[0]!.ratio.median <= 2 &&
      p99!.baselines[0]!.ratio.median <= 2 &&
      runs.every((run) => run.lost === 0) &&
      subscriber.duplicates === 0,
    notes,
    extra: {
      graceMs,
      maxLatency: Object.fromEntries(['blocked', 'clear'].map((mode) => [mode, summarize(runs.filter((run) => run.mode === mode).map((run) => run.max))])),
      blockerXids: evidence,
      logRows: rig.written,
      subscriber,
      runs,
    },
  };
}
