// Queries per second of an idle Tide with live streams on 20 watched tables while an
// unrelated writing transaction is open, against the same Tide with nothing open
// (issue 9). The Tide runs in its own process (bench/jobs/idle.ts) and counts its
// queries through the pg.Pool it is given.
import type { IdleArgs, IdleMode, IdleResult } from '../jobs/idle.js';
import { freshDatabase } from '../lib/db.js';
import { runJob } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize } from '../lib/stats.js';

const tables = 20;
/** The library's default pollInterval: the Tide has been through one poll before counting starts. */
const pollInterval = 1000;

export async function idleQueriesRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await freshDatabase(server.url, 'bench_idle');
  const args: IdleArgs = { url, tables, idleMs: settings.idleMs, settleMs: pollInterval + 500, runs: settings.runs, postmaster: server.postmaster };
  const result = await runJob<IdleResult>('idle', args);
  const of = (mode: IdleMode) => result.runs.filter((run) => run.mode === mode);
  const open = of('open');
  const clear = of('clear');
  const perSecond = summarize(open.map((run) => run.perSecond));
  const kinds = (mode: IdleMode) => {
    const total = new Map<string, number>();
    let seconds = 0;
    for (const run of of(mode)) {
      seconds += run.seconds;
      for (const [kind, count] of Object.entries(run.byKind)) total.set(kind, (total.get(kind) ?? 0) + count);
    }
    return [...total].map(([kind, count]) => `${kind} ${(count / seconds).toFixed(1)}/s`).join(', ') || 'none';
  };
  return {
    id: 'idle-queries',
    scenario: `idle Tide, live streams on ${tables} watched tables, an unrelated writing transaction open (${settings.idleMs / 1000} s counted)`,
    figures: [
      {
        metric: 'queries/s (all tables)',
        unit: '/s',
        pgtide: perSecond,
        baselines: [
          {
            name: 'nothing open',
            value: summarize(clear.map((run) => run.perSecond)),
            ratio: summarize(open.map((run, index) => run.perSecond / clear[index]!.perSecond)),
          },
        ],
      },
      {
        metric: 'server CPU (all processes)',
        unit: 'ms/s',
        pgtide: summarize(open.map((run) => run.serverCpuMsPerSecond)),
        baselines: [
          {
            name: 'nothing open',
            value: summarize(clear.map((run) => run.serverCpuMsPerSecond)),
            ratio: summarize(open.map((run, index) => run.serverCpuMsPerSecond / clear[index]!.serverCpuMsPerSecond)),
          },
        ],
      },
    ],
    target: '<= 1 query/s in total',
    met: perSecond.median <= 1,
    notes: [`transaction open: ${kinds('open')}`, `nothing open: ${kinds('clear')}`],
    extra: { tables, pollInterval, startupQueries: result.startupQueries, runs: result.runs },
  };
}
