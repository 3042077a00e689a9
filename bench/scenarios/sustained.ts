// Sustained delivery: writers insert 10k-row statements as fast as they can for a while;
// one subscriber (in its own process) receives. pgtide's changes$ on the watched table
// against postgres.js sql.subscribe (logical replication) on the same table unwatched,
// alternating in every run.
import type pg from 'pg';
import type { SubscriberArgs, SubscriberResult } from '../jobs/subscriber.js';
import { connectTide, connectedClient, createTableSql, freshDatabase, insertRangeSql } from '../lib/db.js';
import { Job } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, summarize } from '../lib/stats.js';

const table = 'sustain_rows';
const publication = 'bench_pub';

interface Run {
  readonly system: 'pgtide' | 'peer';
  readonly written: number;
  readonly writeRate: number;
  readonly deliveredRate: number;
  /** Changes written but not yet delivered when the writers stopped. */
  readonly lagAtEnd: number;
  /** ms from the writers' end to the last delivery. */
  readonly drainMs: number;
  readonly received: number;
  readonly subscriberMaxRssMB: number;
}

/** Delivered count at time t, interpolated between recorded arrivals. */
function deliveredAt(arrivals: Array<[number, number]>, t: number): number {
  let previous: [number, number] = [0, -Infinity];
  for (const point of arrivals) {
    if (point[1] >= t) {
      if (previous[1] === -Infinity) return 0;
      return previous[0] + ((point[0] - previous[0]) * (t - previous[1])) / Math.max(1e-9, point[1] - previous[1]);
    }
    previous = point;
  }
  return previous[0];
}

async function oneRun(url: string, admin: pg.Client, writers: pg.Client[], system: 'pgtide' | 'peer', settings: Settings): Promise<Run> {
  await admin.query(`DROP PUBLICATION IF EXISTS ${publication}; DROP TABLE IF EXISTS ${table}; ${createTableSql(table)}; TRUNCATE pgtide.log`);
  if (system === 'pgtide') {
    const tide = await connectTide(url);
    await tide.watch(table);
    await tide.close();
  } else {
    await admin.query(`CREATE PUBLICATION ${publication} FOR TABLE ${table}`);
  }
  await admin.query('CHECKPOINT');
  const args: SubscriberArgs = { url, system, table, publication, every: 1000 };
  const job = new Job('subscriber', args);
  try {
    await job.receive('ready');
    const batch = settings.sustainBatch;
    let nextId = 1;
    const text = insertRangeSql(table);
    const start = nowMs();
    const deadline = start + settings.sustainMs;
    await Promise.all(
      writers.map(async (writer) => {
        while (nowMs() < deadline) {
          const from = nextId;
          nextId += batch;
          await writer.query({ name: 'sustain_insert', text, values: [from, from + batch - 1] });
        }
      }),
    );
    const end = nowMs();
    const written = nextId - 1;
    job.send('expect', { total: written });
    const result = await job.result<SubscriberResult>();
    if (result.count < written) throw new Error(`${system} delivered ${result.count} of ${written} changes`);
    return {
      system,
      written,
      writeRate: written / ((end - start) / 1000),
      deliveredRate: written / ((result.last - start) / 1000),
      lagAtEnd: Math.max(0, Math.round(written - deliveredAt(result.arrivals, end))),
      drainMs: Math.max(0, result.last - end),
      received: result.count,
      subscriberMaxRssMB: result.maxRssMB,
    };
  } finally {
    job.kill();
  }
}

export async function sustainedRow(server: BenchServer, settings: Settings, writerCount: number): Promise<Row> {
  const url = await freshDatabase(server.url, `bench_sustain_${writerCount}`);
  const admin = await connectedClient(url);
  // Installs pgtide's schema once.
  await (await connectTide(url)).close();
  const writers = await Promise.all(Array.from({ length: writerCount }, () => connectedClient(url)));
  const runs: Run[] = [];
  try {
    for (let run = 0; run < settings.slowRuns; run += 1) {
      const order: Array<'pgtide' | 'peer'> = run % 2 === 0 ? ['pgtide', 'peer'] : ['peer', 'pgtide'];
      for (const system of order) runs.push(await oneRun(url, admin, writers, system, settings));
    }
  } finally {
    await admin.query(`DROP PUBLICATION IF EXISTS ${publication}`).catch(() => undefined);
    await Promise.all(writers.map((writer) => writer.end()));
    await admin.end();
  }
  const tide = runs.filter((run) => run.system === 'pgtide');
  const peer = runs.filter((run) => run.system === 'peer');
  const ratio = summarize(tide.map((run, index) => run.deliveredRate / peer[index]!.deliveredRate));
  const drain = summarize(tide.map((run) => run.drainMs));
  const lagBounded = drain.median <= 1000;
  return {
    id: `sustained-${writerCount}`,
    scenario: `sustained delivery, ${writerCount} writer${writerCount > 1 ? 's' : ''} (${settings.sustainBatch / 1000}k-row INSERTs, ${settings.sustainMs / 1000} s)`,
    figures: [
      {
        metric: 'changes/s delivered',
        unit: '/s',
        pgtide: summarize(tide.map((run) => run.deliveredRate)),
        baselines: [{ name: 'sql.subscribe', value: summarize(peer.map((run) => run.deliveredRate)), ratio }],
      },
      {
        metric: 'changes/s written',
        unit: '/s',
        pgtide: summarize(tide.map((run) => run.writeRate)),
        baselines: [
          {
            name: 'sql.subscribe',
            value: summarize(peer.map((run) => run.writeRate)),
            ratio: summarize(tide.map((run, index) => run.writeRate / peer[index]!.writeRate)),
          },
        ],
      },
      {
        metric: 'lag at end (changes)',
        unit: '',
        pgtide: summarize(tide.map((run) => run.lagAtEnd)),
        baselines: [{ name: 'sql.subscribe', value: summarize(peer.map((run) => run.lagAtEnd)), ratio: summarize([]) }],
      },
      {
        metric: 'drain after writers stop',
        unit: 'ms',
        pgtide: drain,
        baselines: [{ name: 'sql.subscribe', value: summarize(peer.map((run) => run.drainMs)), ratio: summarize([]) }],
      },
    ],
    target: '>= 0.70x of the peer, lag bounded (drain <= 1 s)',
    met: ratio.median >= 0.7 && lagBounded,
    extra: { runs },
  };
}
