// Consumer groups: a backlog of changes over many rows, consumed by 1, 2 and 4 member
// processes of one group (`changes$({ consumer, group: true })` -> processChanges(handler,
// { concurrency })) whose handler waits 5 ms per change (I/O-bound work, the case groups
// exist for), against one process with a plain durable consumer -> mergeMap(handler, the
// same total concurrency as 4 members) -> acknowledge(). The figure is changes/s
// acknowledged: the backlog / the time from 'go' (every process connected and waiting)
// until the position save after which tide.consumers() reports the consumer's lag at 0
// (its acknowledgedAt), i.e. until every acknowledgement is saved.
import type { GroupMemberArgs, GroupMemberResult } from '../jobs/group-member.js';
import { PgTideError, type Tide } from '../../src/index.js';
import { connectTide, connectedClient, createTableSql, freshDatabase, insertRangeSql } from '../lib/db.js';
import { Job } from '../lib/jobs.js';
import type { Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, sleep, summarize } from '../lib/stats.js';

const table = 'group_rows';
const rowCount = 2000;
const handlerMs = 5;
/** processChanges concurrency per member; the mergeMap baseline gets 4x this. */
const concurrency = 16;
const progressMs = 50;

type Variant = 'members-1' | 'members-2' | 'members-4' | 'mergeMap';
const variants: readonly Variant[] = ['members-1', 'members-2', 'members-4', 'mergeMap'];

interface Measurement {
  readonly variant: Variant;
  readonly run: number;
  readonly changes: number;
  /** go -> the consumer's last position save (acknowledgedAt; see timedBy). */
  readonly seconds: number;
  readonly rate: number;
  /** 'poll' when acknowledgedAt did not fit and the start of the poll that saw lag 0 was used. */
  readonly timedBy: 'acknowledgedAt' | 'poll';
  /** go -> the start of the poll that saw lag 0. */
  readonly pollSeconds: number;
  /** Duration of that tide.consumers() call, and how many of its entries were this consumer's. */
  readonly lagQueryMs: number;
  readonly entries: number;
  /** Handled changes per process (their sum minus the backlog: changes handled twice). */
  readonly handled: number[];
  /** go -> each process's first handler call, ms. */
  readonly startMs: number[];
  /** Last handler completion (any process) -> the last position save, ms. */
  readonly saveMs: number;
  readonly maxRssMB: number[];
  readonly cpuMs: number[];
}

/**
 * The consumer's entries in tide.consumers(): the name itself and, for a group, its
 * partitions' consumers ('<group>/<k>'). Their lag (summed) and when a position was
 * last saved (the latest, server clock ms); undefined before any is registered.
 * Costly: it counts the table's undelivered log rows per entry (about 0.5 s per 30k rows).
 */
async function lagOf(tide: Tide, consumer: string): Promise<{ lag: number; savedAt: number; names: string[] } | undefined> {
  const entries = (await tide.consumers()).filter((info) => info.name === consumer || info.name.startsWith(`${consumer}/`));
  if (entries.length === 0) return undefined;
  return {
    lag: entries.reduce((sum, info) => sum + info.lagChanges, 0),
    savedAt: Math.max(...entries.map((info) => info.acknowledgedAt.getTime())),
    names: entries.map((info) => info.name),
  };
}

/** The server's clock minus Date.now(), ms (to compare acknowledgedAt with local times). */
async function serverClockOffset(tide: Tide): Promise<number> {
  const before = Date.now();
  const { rows } = await tide.pool.query<{ ms: number }>('SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms');
  return rows[0]!.ms - (before + Date.now()) / 2;
}

/** Whether changes$ takes the `group` option (a version without it throws INVALID_OPTIONS at once). */
function groupsSupported(tide: Tide): boolean {
  try {
    tide.changes$(table, { consumer: 'bench-group-probe', from: 'beginning', group: true });
    return true;
  } catch (error) {
    if (error instanceof PgTideError && error.code === 'INVALID_OPTIONS') return false;
    throw error;
  }
}

async function measure(url: string, tide: Tide, variant: Variant, run: number, total: number): Promise<Measurement> {
  const consumer = `bench-${variant}-${run}`;
  const members = variant === 'mergeMap' ? 1 : Number(variant.slice('members-'.length));
  const args: GroupMemberArgs =
    variant === 'mergeMap'
      ? { url, table, consumer, mode: 'mergeMap', concurrency: 4 * concurrency, handlerMs, progressMs }
      : { url, table, consumer, mode: 'group', concurrency, handlerMs, progressMs };
  const jobs = Array.from({ length: members }, () => new Job('group-member', args));
  try {
    await Promise.all(jobs.map((job) => job.receive('ready')));
    const handled = jobs.map(() => 0);
    let failure: unknown;
    jobs.forEach((job, index) => {
      void (async () => {
        for (;;) handled[index] = await job.receive<number>('progress');
      })().catch((error: unknown) => (failure ??= error));
    });
    const offset = await serverClockOffset(tide);
    const go = nowMs();
    const goAt = Date.now() + offset;
    for (const job of jobs) job.send('go');
    // Wait until the processes have handled the whole backlog (their progress messages),
    // then until the lag query says every acknowledgement is saved.
    let seen = 0;
    let progressAt = go;
    let saved: Awaited<ReturnType<typeof lagOf>>;
    let polledAt = 0;
    let lagQueryMs = 0;
    for (;;) {
      if (failure !== undefined) throw failure;
      const sum = handled.reduce((a, b) => a + b, 0);
      const now = nowMs();
      if (sum !== seen) {
        seen = sum;
        progressAt = now;
      } else if (now - progressAt > 30_000) {
        throw new Error(`${variant}: no progress for 30 s (${sum} of ${total} handled, lag ${JSON.stringify(await lagOf(tide, consumer))})`);
      }
      if (sum >= total) {
        polledAt = nowMs();
        saved = await lagOf(tide, consumer);
        lagQueryMs = nowMs() - polledAt;
        if (saved?.lag === 0) break;
      }
      await sleep(sum >= total ? 20 : 10);
    }
    const pollSeconds = (polledAt - go) / 1000;
    // The last save happened before the poll that saw lag 0 started; a save time outside
    // (go, that poll) means acknowledgedAt is not the last save: fall back to the poll.
    const savedSeconds = (saved.savedAt - goAt) / 1000;
    const exact = savedSeconds > 0 && savedSeconds <= pollSeconds + 0.005;
    const seconds = exact ? savedSeconds : pollSeconds;
    for (const job of jobs) job.send('stop');
    const results = await Promise.all(jobs.map((job) => job.result<GroupMemberResult>()));
    const counts = results.map((result) => result.handled);
    const sum = counts.reduce((a, b) => a + b, 0);
    if (sum < total) throw new Error(`${variant}: lag 0 after only ${sum} of ${total} changes were handled`);
    // Drop what the measurement left (a group's partitions too), so later lag queries stay cheap.
    for (const name of new Set([consumer, ...saved.names])) await tide.dropConsumer(name).catch(() => false);
    return {
      variant,
      run,
      changes: total,
      seconds,
      rate: total / seconds,
      timedBy: exact ? 'acknowledgedAt' : 'poll',
      pollSeconds,
      lagQueryMs,
      entries: saved.names.length,
      handled: counts,
      startMs: results.map((result) => (result.firstAt === 0 ? Number.NaN : result.firstAt - result.goAt)),
      saveMs: go + seconds * 1000 - Math.max(...results.map((result) => result.lastAt)),
      maxRssMB: results.map((result) => result.maxRssMB),
      cpuMs: results.map((result) => Math.round(result.cpuMs)),
    };
  } finally {
    for (const job of jobs) job.kill();
  }
}

export async function groupsRow(server: BenchServer, settings: Settings): Promise<Row> {
  // Changes per row: its insert, then one UPDATE statement of every row per further change.
  // Quick: 8k changes, 2 runs (under 30 s); full: 30k (about 10 s for 1 member), 3 runs.
  const perRow = settings.quick ? 4 : 15;
  const runs = settings.quick ? 2 : settings.slowRuns;
  const total = rowCount * perRow;
  const url = await freshDatabase(server.url, 'bench_groups');
  const admin = await connectedClient(url);
  await admin.query(createTableSql(table));
  const tide = await connectTide(url);
  const measurements: Measurement[] = [];
  let supported = false;
  try {
    await tide.watch(table);
    await admin.query(insertRangeSql(table), [1, rowCount]);
    for (let change = 1; change < perRow; change += 1) await admin.query(`UPDATE ${table} SET quota = quota + 1`);
    await admin.query('VACUUM ANALYZE pgtide.log');
    supported = groupsSupported(tide);
    for (let run = 0; run < runs; run += 1) {
      // Rotate the order every run, so warming up and neighbours' load hit every variant.
      const order = [...variants.slice(run % variants.length), ...variants.slice(0, run % variants.length)];
      for (const variant of order) {
        if (variant !== 'mergeMap' && !supported) continue;
        measurements.push(await measure(url, tide, variant, run, total));
      }
    }
  } finally {
    await tide.close();
    await admin.end();
  }
  const of = (variant: Variant) => measurements.filter((m) => m.variant === variant);
  const rates = (variant: Variant) => summarize(of(variant).map((m) => m.rate));
  const ratio = (a: Variant, b: Variant) => summarize(of(a).map((m) => m.rate / of(b).find((other) => other.run === m.run)!.rate));
  const fourToOne = ratio('members-4', 'members-1');
  const baselineName = `1 process, mergeMap(${4 * concurrency}) -> acknowledge()`;
  const notes: string[] = [];
  if (!supported) notes.push('changes$ rejects the group option (INVALID_OPTIONS): only the mergeMap baseline ran');
  const grouped = measurements.filter((m) => m.variant !== 'mergeMap');
  if (grouped.length > 0) {
    const twice = grouped.map((m) => m.handled.reduce((a, b) => a + b, 0) - m.changes);
    const start = grouped.flatMap((m) => m.startMs).filter(Number.isFinite);
    notes.push(
      `handler bound ${concurrency} / ${handlerMs} ms = ${((concurrency * 1000) / handlerMs / 1000).toFixed(1)}k/s per member; ` +
        `changes handled twice: max ${Math.max(...twice)}; go -> a member's first handler call: max ${start.length > 0 ? Math.max(...start).toFixed(0) : 'n/a'} ms`,
    );
  }
  return {
    id: 'groups',
    scenario: `consumer group, ${total / 1000}k backlog over ${rowCount / 1000}k rows, handler waits ${handlerMs} ms: processChanges(concurrency ${concurrency}) per member process`,
    figures: [
      {
        metric: 'changes/s acknowledged, 4 members',
        unit: '/s',
        pgtide: rates('members-4'),
        baselines: [
          { name: '1 member', value: rates('members-1'), ratio: fourToOne },
          { name: baselineName, value: rates('mergeMap'), ratio: ratio('members-4', 'mergeMap') },
        ],
      },
      {
        metric: 'changes/s acknowledged, 2 members',
        unit: '/s',
        pgtide: rates('members-2'),
        baselines: [{ name: '1 member', value: rates('members-1'), ratio: ratio('members-2', 'members-1') }],
      },
    ],
    target: '4 members >= 3x 1 member',
    met: supported && fourToOne.median >= 3,
    notes,
    extra: { concurrency, handlerMs, rowCount, perRow, measurements },
  };
}
