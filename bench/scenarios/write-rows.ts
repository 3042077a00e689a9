// Rows of the write-overhead scenarios, with their targets. The main figure is the write
// rate with a live subscriber in another process (as in production); the rate with
// nobody reading stands beside it.
import type { Figure, Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize, type Summary } from '../lib/stats.js';
import { bulkInserts, singleRowInserts, wideUpdates, type Variant, type VariantRuns } from './writes.js';

function ratioTo(runs: Record<Variant, Summary>, variant: Variant, base: Variant): Summary {
  return summarize(runs[variant].runs.map((value, index) => value / runs[base].runs[index]!));
}

function figure(metric: string, unit: string, runs: Record<Variant, Summary>, variant: Variant): Figure {
  return {
    metric,
    unit,
    pgtide: runs[variant],
    baselines: [
      { name: 'unwatched', value: runs.plain, ratio: ratioTo(runs, variant, 'plain') },
      { name: 'bare trigger+log', value: runs.bare, ratio: ratioTo(runs, variant, 'bare') },
    ],
  };
}

interface Targets {
  /** Write rate with the live subscriber, against unwatched. */
  readonly rate: number;
  /** WAL per row, against unwatched (at most). */
  readonly wal?: number;
  /** The subscriber's CPU per change, µs (at most). */
  readonly subscriberMicros?: number;
}

function row(id: string, scenario: string, metric: string, runs: VariantRuns, targets: Targets): Row {
  const main = figure(`${metric}, subscriber in another process`, '/s', runs.rate, 'live');
  const wal = figure('WAL bytes per row', 'B', runs.walPerRow, 'live');
  const subscriberCpu: Figure = { metric: 'subscriber CPU per change', unit: 'µs', pgtide: runs.subscriber.cpuMicrosPerChange, baselines: [] };
  const walRatio = wal.baselines[0]!.ratio.median;
  const met =
    main.baselines[0]!.ratio.median >= targets.rate &&
    (targets.wal === undefined || walRatio <= targets.wal) &&
    (targets.subscriberMicros === undefined || runs.subscriber.cpuMicrosPerChange.median <= targets.subscriberMicros);
  const target = [
    `>= ${targets.rate.toFixed(2)}x unwatched`,
    ...(targets.wal !== undefined ? [`WAL <= ${targets.wal.toFixed(1)}x`] : []),
    ...(targets.subscriberMicros !== undefined ? [`subscriber <= ${targets.subscriberMicros} µs/change`] : []),
  ].join('; ');
  return {
    id,
    scenario,
    figures: [
      main,
      figure(`${metric}, nobody reading`, '/s', runs.rate, 'pgtide'),
      figure('per server CPU-second, subscriber in another process', '', runs.perCpuSecond, 'live'),
      wal,
      subscriberCpu,
    ],
    target,
    met,
    notes: [`the subscriber caught up ${runs.subscriber.drainMs.median.toFixed(1)} ms (median) after a slice's last write`],
    extra: { bareVsUnwatched: ratioTo(runs.rate, 'bare', 'plain'), walPerRow: runs.walPerRow, drainMs: runs.subscriber.drainMs },
  };
}

export async function insertRow(server: BenchServer, settings: Settings, clients: number): Promise<Row> {
  const runs = await singleRowInserts(server, settings, clients);
  const scenario = `single-row INSERT, ${clients} client${clients > 1 ? 's' : ''}, autocommit`;
  return row(`insert-${clients}`, scenario, 'inserts/s', runs, clients === 1 ? { rate: 0.8, wal: 1.8, subscriberMicros: 60 } : { rate: 0.75 });
}

export async function bulkInsertRow(server: BenchServer, settings: Settings): Promise<Row> {
  return row('bulk', 'bulk INSERT, 10k rows per statement', 'rows/s', await bulkInserts(server, settings), { rate: 0.45 });
}

export async function updateRow(server: BenchServer, settings: Settings): Promise<Row> {
  return row('update', 'UPDATE of one watched column on 100k rows', 'rows/s', await wideUpdates(server, settings), { rate: 0.35 });
}
