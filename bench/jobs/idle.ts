// An idle Tide in a process of its own: live streams (one changes$ each, caught up) on
// many watched tables, no writes to them. Counts every query the Tide sends through a
// counting pg.Pool passed as connect({ pool }), while an unrelated writing transaction
// (an INSERT into a table nobody watches, same database) is held open, and while
// nothing is open. In both, one more unrelated write commits once the transaction is
// open (as on any server where anything else happens): until a later transaction
// completes, a snapshot shows the newest xid as not yet started rather than running
// (xid >= xmax), and a horizon-based reader would not see the open transaction at all. pgtide's LISTEN connection is its own (pg-listen, not through the
// pool) and is not counted: it only LISTENs (and pg-listen's paranoid check, SELECT 1
// every 10 s).
import pg from 'pg';
import { connect } from '../../src/index.js';
import type { Channel } from '../worker.js';
import { cpuSince, serverCpu } from '../lib/cpu.js';
import { connectedClient, createTableSql, silentLogger } from '../lib/db.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface IdleArgs {
  readonly url: string;
  readonly tables: number;
  /** How long queries are counted per measurement. */
  readonly idleMs: number;
  /** Wait after opening (or not) the unrelated transaction, before counting. */
  readonly settleMs: number;
  readonly runs: number;
  /** The server's postmaster, for its CPU (lib/cpu.ts). */
  readonly postmaster: number;
}

export type IdleMode = 'open' | 'clear';

export interface IdleRun {
  readonly mode: IdleMode;
  readonly queries: number;
  readonly seconds: number;
  readonly perSecond: number;
  /** CPU ms per second of every server process meanwhile (the open transaction's backend idles). */
  readonly serverCpuMsPerSecond: number;
  /** Queries by kind (the pgtide function or statement they run). */
  readonly byKind: Record<string, number>;
}

export interface IdleResult {
  readonly runs: IdleRun[];
  /** Queries from connect() until every stream was caught up (not part of any run). */
  readonly startupQueries: number;
}

/** What a query runs, by the first of these names in it (the old reader's page query also takes a snapshot). */
const kinds = ['read_page', 'tables_with_news', 'pg_current_snapshot', 'current_era', 'has_table_privilege', 'watched', 'consumers'];

function kindOf(query: unknown): string {
  const text = typeof query === 'string' ? query : ((query as { text?: string } | null)?.text ?? '');
  return kinds.find((kind) => text.includes(kind)) ?? text.replace(/\s+/g, ' ').trim().slice(0, 40);
}

export default async function idle(args: IdleArgs, _channel: Channel): Promise<IdleResult> {
  const admin = await connectedClient(args.url);
  const names = Array.from({ length: args.tables }, (_, index) => `idle_${String(index).padStart(2, '0')}`);
  await admin.query(`${names.map((name) => createTableSql(name)).join(';\n')}; CREATE TABLE idle_other (id bigint PRIMARY KEY, note text); CREATE TABLE idle_else (id bigint PRIMARY KEY)`);

  let queries = 0;
  let byKind = new Map<string, number>();
  const pool = new pg.Pool({ connectionString: args.url, application_name: 'pgtide-bench-idle' });
  pool.on('error', (error) => console.warn('[bench] idle pool connection error:', error.message));
  // pool.query() runs client.query() on a pooled client, so counting there sees every query.
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...rest: unknown[]) => unknown;
    (client as unknown as { query: (...rest: unknown[]) => unknown }).query = (...rest: unknown[]) => {
      queries += 1;
      const kind = kindOf(rest[0]);
      byKind.set(kind, (byKind.get(kind) ?? 0) + 1);
      return query(...rest);
    };
  });
  // The library's defaults (pollInterval 1000) except background prunes, as everywhere in the suite.
  const tide = await connect({ pool, logger: silentLogger, pruneInterval: 0 });
  for (const name of names) await tide.watch(name);
  const subscriptions = await Promise.all(
    names.map(
      (name) =>
        new Promise<{ unsubscribe(): void }>((resolve, reject) => {
          const subscription = tide.events$(name).subscribe({
            next: (event) => {
              if (event.kind === 'caught-up') resolve(subscription);
            },
            error: reject,
          });
        }),
    ),
  );
  const startupQueries = queries;

  const blocker = await connectedClient(args.url);
  const runs: IdleRun[] = [];
  let blockerRow = 0;
  let elseRow = 0;
  const modes: IdleMode[] = ['open', 'clear'];
  for (let run = 0; run < args.runs; run += 1) {
    for (let index = 0; index < modes.length; index += 1) {
      const mode = modes[(run + index) % modes.length]!;
      if (mode === 'open') {
        await blocker.query('BEGIN');
        await blocker.query('INSERT INTO idle_other (id, note) VALUES ($1, $2)', [++blockerRow, 'held open while the Tide idles']);
      }
      await admin.query('INSERT INTO idle_else (id) VALUES ($1)', [++elseRow]);
      await sleep(args.settleMs);
      queries = 0;
      byKind = new Map();
      const cpuBefore = serverCpu(args.postmaster);
      const start = nowMs();
      await sleep(args.idleMs);
      const seconds = (nowMs() - start) / 1000;
      const serverCpuMsPerSecond = cpuSince(cpuBefore, serverCpu(args.postmaster)) / seconds;
      runs.push({ mode, queries, seconds, perSecond: queries / seconds, serverCpuMsPerSecond, byKind: Object.fromEntries(byKind) });
      if (mode === 'open') await blocker.query('COMMIT');
    }
  }
  for (const subscription of subscriptions) subscription.unsubscribe();
  await tide.close();
  await pool.end();
  await blocker.end();
  await admin.end();
  return { runs, startupQueries };
}
