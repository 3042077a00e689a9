// Fan-out: 1k and 10k observables with different rowIds on one Tide, against one
// observable of the whole table receiving the same number of changes; each in a fresh process.
import type { FanoutArgs, FanoutResult } from '../jobs/fanout.js';
import { connectedClient, watchedTableDatabase } from '../lib/db.js';
import { runJob } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize } from '../lib/stats.js';

const table = 'fan_rows';
const rows = 10_000;

export async function fanoutRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await watchedTableDatabase(server.url, 'bench_fanout', table, rows);
  const run = async (observers: number) => {
    // Every configuration starts from the same state: autovacuum counters reset, statistics fresh.
    const vacuum = await connectedClient(url);
    await vacuum.query(`VACUUM ANALYZE ${table}, pgtide.log`);
    await vacuum.end();
    return runJob<FanoutResult>('fanout', {
      url,
      table,
      observers,
      rows,
      rate: settings.latencyRate,
      durationMs: settings.fanoutMs,
      warmupMs: settings.warmupMs,
      windows: settings.runs,
      valueBase: observers * 100_000_000,
    } satisfies FanoutArgs);
  };
  const one = await run(1);
  const results = [await run(1000), await run(10_000)];
  const figures = results.flatMap((result) => {
    const label = `${result.observers / 1000}k`;
    const p99 = summarize(result.windows.map((window) => window.p99));
    const baseP99 = summarize(one.windows.map((window) => window.p99));
    const rss = summarize(result.windows.map((window) => window.rssMB));
    const baseRss = summarize(one.windows.map((window) => window.rssMB));
    return [
      {
        metric: `${label}: p99 from send`,
        unit: 'ms',
        pgtide: p99,
        baselines: [{ name: '1 observable', value: baseP99, ratio: summarize(result.windows.map((window, index) => window.p99 / one.windows[index]!.p99)) }],
      },
      {
        metric: `${label}: p50 from send`,
        unit: 'ms',
        pgtide: summarize(result.windows.map((window) => window.p50)),
        baselines: [
          {
            name: '1 observable',
            value: summarize(one.windows.map((window) => window.p50)),
            ratio: summarize(result.windows.map((window, index) => window.p50 / one.windows[index]!.p50)),
          },
        ],
      },
      {
        metric: `${label}: RSS while delivering`,
        unit: 'MB',
        pgtide: rss,
        baselines: [{ name: '1 observable', value: baseRss, ratio: summarize(result.windows.map((window, index) => window.rssMB / one.windows[index]!.rssMB)) }],
      },
      {
        metric: `${label}: peak RSS (incl. subscribing)`,
        unit: 'MB',
        pgtide: summarize([result.maxRssMB]),
        baselines: [{ name: '1 observable', value: summarize([one.maxRssMB]), ratio: summarize([result.maxRssMB / one.maxRssMB]) }],
      },
      {
        metric: `${label}: subscribe until all caught up`,
        unit: 'ms',
        pgtide: summarize([result.subscribeMs]),
        baselines: [{ name: '1 observable', value: summarize([one.subscribeMs]), ratio: summarize([result.subscribeMs / one.subscribeMs]) }],
      },
    ];
  });
  const tenK = results[1]!;
  const p99At10k = summarize(tenK.windows.map((window) => window.p99)).median;
  const lost = [one, ...results].flatMap((result) => result.windows.filter((window) => window.received < window.sent).map(() => result.observers));
  return {
    id: 'fanout',
    scenario: `fan-out: rowId observables on one Tide, ${settings.latencyRate / 1000}k updates/s`,
    figures,
    target: 'p99 <= 10 ms at 10k',
    met: p99At10k <= 10 && lost.length === 0,
    notes: lost.length > 0 ? [`windows with missing changes (observers): ${lost.join(', ')}`] : [],
    extra: { baseline: one, results },
  };
}
