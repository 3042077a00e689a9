import type { LatencyArgs, LatencyRun, Mode } from '../jobs/latency.js';
import { freshDatabase } from '../lib/db.js';
import { runJob } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize } from '../lib/stats.js';

export async function latencyRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await freshDatabase(server.url, 'bench_latency');
  const args: LatencyArgs = {
    url,
    rate: settings.latencyRate,
    durationMs: settings.latencyMs,
    warmupMs: settings.warmupMs,
    runs: settings.runs,
  };
  const runs = await runJob<LatencyRun[]>('latency', args);
  const of = (mode: Mode) => runs.filter((run) => run.mode === mode);
  const figure = (metric: 'p50' | 'p99') => {
    const tide = of('pgtide');
    const baselines = (['notify', 'bare'] as const).map((mode) => {
      const base = of(mode);
      return {
        name: mode === 'notify' ? 'NOTIFY -> pg-listen' : 'bare trigger+log+NOTIFY+SELECT',
        value: summarize(base.map((run) => run[metric])),
        ratio: summarize(tide.map((run, index) => run[metric] / base[index]![metric])),
      };
    });
    return { metric: `${metric} from send`, unit: 'ms', pgtide: summarize(tide.map((run) => run[metric])), baselines };
  };
  const p50 = figure('p50');
  const p99 = figure('p99');
  const lost = runs.filter((run) => run.received < run.sent);
  return {
    id: 'latency',
    scenario: `commit -> changes$ emission at ${settings.latencyRate / 1000}k changes/s`,
    figures: [p50, p99],
    target: 'p50 <= 0.8 ms, p99 <= 2 ms',
    met: p50.pgtide.median <= 0.8 && p99.pgtide.median <= 2 && lost.length === 0,
    notes: lost.length > 0 ? [`${lost.length} run(s) did not receive every change: ${JSON.stringify(lost)}`] : [],
    extra: {
      achievedRate: summarize(runs.map((run) => run.rate)),
      maxLatency: Object.fromEntries((['notify', 'bare', 'pgtide'] as const).map((mode) => [mode, summarize(of(mode).map((run) => run.max))])),
      runs,
    },
  };
}
