// Durable consumer: a backlog through batchChanges -> async handler -> acknowledge() on a
// consumer stream, against the same pipeline without acknowledgement on a plain stream.
import type { DurableArgs, DurableResult } from '../jobs/durable.js';
import { connectTide, connectedClient, createTableSql, freshDatabase, insertRangeSql } from '../lib/db.js';
import { runJob } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { summarize } from '../lib/stats.js';

const table = 'durable_rows';

export async function durableRow(server: BenchServer, settings: Settings): Promise<Row> {
  const url = await freshDatabase(server.url, 'bench_durable');
  const admin = await connectedClient(url);
  const total = settings.durableChanges;
  await admin.query(createTableSql(table));
  const tide = await connectTide(url);
  await tide.watch(table);
  await tide.close();
  for (let from = 1; from <= total; from += 100_000) await admin.query(insertRangeSql(table), [from, Math.min(total, from + 99_999)]);
  await admin.query('VACUUM ANALYZE pgtide.log');
  await admin.end();
  const ack: DurableResult[] = [];
  const plain: DurableResult[] = [];
  for (let run = 0; run < settings.runs; run += 1) {
    const order: Array<'ack' | 'plain'> = run % 2 === 0 ? ['plain', 'ack'] : ['ack', 'plain'];
    for (const mode of order) {
      const result = await runJob<DurableResult>('durable', { url, table, total, mode, consumer: `bench-${run}` } satisfies DurableArgs);
      if (result.rows !== total) throw new Error(`${mode} processed ${result.rows} of ${total} changes`);
      (mode === 'ack' ? ack : plain).push(result);
    }
  }
  const ratio = summarize(ack.map((result, index) => result.rate / plain[index]!.rate));
  return {
    id: 'durable',
    scenario: `durable consumer, ${total / 1000}k backlog: batchChanges(100) -> async handler -> acknowledge()`,
    figures: [
      {
        metric: 'changes/s acknowledged',
        unit: '/s',
        pgtide: summarize(ack.map((result) => result.rate)),
        baselines: [{ name: 'same pipeline, no consumer/ack', value: summarize(plain.map((result) => result.rate)), ratio }],
      },
    ],
    target: '>= 0.80x',
    met: ratio.median >= 0.8,
    extra: { saveMs: summarize(ack.map((result) => result.saveMs)), ack, plain },
  };
}
