// Backlog replay: N changes of one table through changes$ from 'beginning', against a
// raw pg-cursor read of the same log rows; each run in a fresh process for its peak RSS.
import type { ReplayArgs, ReplayResult } from '../jobs/replay.js';
import { connectTide, connectedClient, createTableSql, freshDatabase, insertRangeSql } from '../lib/db.js';
import { runJob } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize } from '../lib/stats.js';

const table = 'replay_rows';

export async function replayRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await freshDatabase(server.url, 'bench_replay');
  const admin = await connectedClient(url);
  const total = settings.replayChanges;
  await admin.query(createTableSql(table));
  const tide = await connectTide(url);
  await tide.watch(table);
  await tide.close();
  const step = 100_000;
  for (let from = 1; from <= total; from += step) await admin.query(insertRangeSql(table), [from, Math.min(total, from + step - 1)]);
  await admin.query('VACUUM ANALYZE pgtide.log');
  const size = await admin.query<{ bytes: string; avg: string }>(
    `SELECT pg_total_relation_size('pgtide.log')::text AS bytes, avg(pg_column_size(new))::int::text AS avg FROM pgtide.log`,
  );
  await admin.end();

  const base = { url, table, total, batch: 5000 };
  const tideRuns: ReplayResult[] = [];
  const rawRuns: ReplayResult[] = [];
  for (let run = 0; run < settings.slowRuns; run += 1) {
    const order: Array<'pgtide' | 'cursor'> = run % 2 === 0 ? ['cursor', 'pgtide'] : ['pgtide', 'cursor'];
    for (const mode of order) {
      const result = await runJob<ReplayResult>('replay', { ...base, mode } satisfies ReplayArgs);
      if (result.rows !== total) throw new Error(`${mode} replayed ${result.rows} of ${total} changes`);
      (mode === 'pgtide' ? tideRuns : rawRuns).push(result);
    }
  }
  const rate = summarize(tideRuns.map((run) => run.rate));
  const raw = summarize(rawRuns.map((run) => run.rate));
  const ratio = summarize(tideRuns.map((run, index) => run.rate / rawRuns[index]!.rate));
  const rss = summarize(tideRuns.map((run) => run.maxRssMB));
  const rawRss = summarize(rawRuns.map((run) => run.maxRssMB));
  return {
    id: 'replay',
    scenario: `backlog replay of ${total >= 1e6 ? `${total / 1e6}M` : `${total / 1e3}k`} changes (avg new ${size.rows[0]!.avg} B jsonb)`,
    figures: [
      { metric: 'changes/s', unit: '/s', pgtide: rate, baselines: [{ name: 'pg-cursor (5000/read)', value: raw, ratio }] },
      {
        metric: 'peak RSS',
        unit: 'MB',
        pgtide: rss,
        baselines: [{ name: 'pg-cursor', value: rawRss, ratio: summarize(tideRuns.map((run, index) => run.maxRssMB / rawRuns[index]!.maxRssMB)) }],
      },
    ],
    target: '>= 300k/s, >= 0.60x raw, RSS < 200 MB',
    met: rate.median >= 300_000 && ratio.median >= 0.6 && rss.median < 200,
    extra: { logBytes: Number(size.rows[0]!.bytes), tideRuns, rawRuns },
  };
}
