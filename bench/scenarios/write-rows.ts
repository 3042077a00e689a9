// Rows of the write-overhead scenarios, with their targets.
import type { Figure, Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize } from '../lib/stats.js';
import { bulkInserts, singleRowInserts, wideUpdates, type VariantRuns } from './writes.js';

function figure(metric: string, unit: string, runs: VariantRuns['rate']): Figure {
  const ratio = (base: 'plain' | 'bare') => summarize(runs.pgtide.runs.map((value, index) => value / runs[base].runs[index]!));
  return {
    metric,
    unit,
    pgtide: runs.pgtide,
    baselines: [
      { name: 'unwatched', value: runs.plain, ratio: ratio('plain') },
      { name: 'bare trigger+log', value: runs.bare, ratio: ratio('bare') },
    ],
  };
}

function row(id: string, scenario: string, metric: string, runs: VariantRuns, target: number): Row {
  const main = figure(metric, '/s', runs.rate);
  const bareFloor = summarize(runs.rate.bare.runs.map((value, index) => value / runs.rate.plain.runs[index]!));
  return {
    id,
    scenario,
    figures: [main, figure('per server CPU-second', '', runs.perCpuSecond)],
    target: `>= ${target.toFixed(2)}x unwatched`,
    met: main.baselines[0]!.ratio.median >= target,
    extra: { bareVsUnwatched: bareFloor },
  };
}

export async function insertRow(server: BenchServer, settings: Settings, clients: number): Promise<Row> {
  const runs = await singleRowInserts(server, settings, clients);
  return row(`insert-${clients}`, `single-row INSERT, ${clients} client${clients > 1 ? 's' : ''}, autocommit`, 'inserts/s', runs, clients === 1 ? 0.8 : 0.75);
}

export async function bulkInsertRow(server: BenchServer, settings: Settings): Promise<Row> {
  return row('bulk', 'bulk INSERT, 10k rows per statement', 'rows/s', await bulkInserts(server, settings), 0.4);
}

export async function updateRow(server: BenchServer, settings: Settings): Promise<Row> {
  return row('update', 'UPDATE of one watched column on 100k rows', 'rows/s', await wideUpdates(server, settings), 0.35);
}
