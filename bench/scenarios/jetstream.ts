// JetStream bridge (src/nats.ts), against a real `nats-server -js` started here (the
// tests' test/nats-server.ts: a free loopback port, its store in a temp dir); the row is
// skipped with a note when nats-server is not installed.
//  - Throughput: a backlog of N changes of one table relayed by relayToJetStream (from
//    'beginning', window 256) into a fresh stream, from the call until status().relayed
//    is N (every change acknowledged by JetStream), against the bare client,
//    jetstream(nc).publish(), publishing the same N payloads (encodeChange of the changes,
//    read once through changes$ beforehand), with the relay's subjects shape, msgIDs and
//    headers and the same number in flight (256), into another fresh stream with the same
//    configuration. Each run in a fresh process (bench/jobs/relay.ts), alternating order.
//  - Latency: one writer in this process commits single-row INSERTs at 500/s; a relay of
//    that table runs in a child process (bench/jobs/relay.ts, mode live); this process
//    subscribes jetStreamEvents$ (a durable JetStream consumer -> acknowledge()) and, as
//    the baseline, changes$ of the same table, so both see the same writes. Latency is the
//    emission minus the moment the writer's INSERT (autocommit) returned, one clock.
import { jetstreamManager, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import { connect as connectNats } from '@nats-io/transport-node';
import { readdirSync, readFileSync } from 'node:fs';
import { filter, firstValueFrom, map, take, tap, toArray } from 'rxjs';
import { acknowledge } from '../../operators/acknowledge.js';
import { decodeChange, encodeChange } from '../../src/codec.js';
import type { Change, Tide } from '../../src/index.js';
import { jetStreamEvents$ } from '../../src/nats.js';
import { natsServerBinary, startNatsServer, type NatsServer } from '../../test/nats-server.js';
import type { Payloads, RelayArgs, RelayResult } from '../jobs/relay.js';
import { connectTide, connectedClient, createTableSql, freshDatabase, insertOneSql, insertRangeSql } from '../lib/db.js';
import { Job, runJob } from '../lib/jobs.js';
import { paced } from '../lib/pacer.js';
import type { Figure, Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, quantile, sleep, summarize, type Summary } from '../lib/stats.js';

const backlogTable = 'js_backlog';
const liveTable = 'js_live';
const window = 256;
const liveRate = 500;
/** The relay's default (and the stream it would create): 2 minutes. */
const duplicateWindowMs = 120_000;

type Mode = RelayArgs['mode'];

interface Measurement extends RelayResult {
  readonly run: number;
  /** Bytes JetStream stored for the N messages (the same payloads and headers: equal for both). */
  readonly streamBytes: number;
}

interface LatencyRun {
  readonly run: number;
  readonly sent: number;
  /** Achieved commit rate (the writer is one connection, each INSERT awaited: below the target rate when INSERTs take longer than 1 / rate). */
  readonly rate: number;
  /** INSERT round trips (send -> return), ms. */
  readonly insertMs: { readonly p50: number; readonly mean: number };
  /** From the INSERT's return (commit) to the emission, ms. */
  readonly jetstream: { readonly p50: number; readonly p99: number; readonly max: number; readonly lost: number };
  readonly changes: { readonly p50: number; readonly p99: number; readonly max: number; readonly lost: number };
  /** The same, from the moment the INSERT was sent. */
  readonly jetstreamFromSend: { readonly p50: number; readonly p99: number };
  readonly changesFromSend: { readonly p50: number; readonly p99: number };
  /** From the commit to the relay's publish reaching a core NATS subscriber of the stream's subjects (where the time goes). */
  readonly published: { readonly p50: number; readonly p99: number };
}

/** The nats-server child of this process (for its CPU time), or undefined. */
function natsServerPid(): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const command = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (command === 'nats-server' && parent === process.pid) return Number(entry);
    } catch {
      // The process ended while we looked.
    }
  }
  return undefined;
}

async function freshStream(jsm: JetStreamManager, name: string, prefix: string): Promise<void> {
  await jsm.streams.delete(name).catch(() => false);
  await jsm.streams.add({ name, subjects: [`${prefix}.>`], storage: StorageType.File, duplicate_window: nanos(duplicateWindowMs) });
}

/** The relay's message id prefix for a table: `<system identifier>.<database oid>.<table oid>` (as src/nats.ts builds it). */
async function msgIdPrefix(tide: Tide, table: string): Promise<string> {
  const { rows } = await tide.pool.query<{ system: string; database: string; relid: string }>(
    `SELECT (SELECT e.system_identifier::text FROM pgtide.eras e ORDER BY e.era DESC LIMIT 1) AS system,
            (SELECT d.oid::text FROM pg_database d WHERE d.datname = current_database()) AS database,
            to_regclass($1)::oid::int8::text AS relid`,
    [table],
  );
  return `${rows[0]!.system}.${rows[0]!.database}.${rows[0]!.relid}`;
}

function latencyOf(samples: number[]): { p50: number; p99: number; max: number } {
  return { p50: quantile(samples, 0.5), p99: quantile(samples, 0.99), max: quantile(samples, 1) };
}

function skipped(total: number, note: string): Row {
  const none = summarize([]);
  const figure = (metric: string, unit: string): Figure => ({ metric, unit, pgtide: none, baselines: [] });
  return {
    id: 'jetstream',
    scenario: `JetStream bridge: ${total / 1000}k backlog relayed; commit -> fromJetStream at ${liveRate}/s`,
    figures: [figure('changes/s relayed', '/s'), figure('p50 commit -> fromJetStream', 'ms'), figure('p99 commit -> fromJetStream', 'ms')],
    target: '>= 0.70x bare publish',
    met: undefined,
    notes: [note],
  };
}

export async function jetstreamRow(server: BenchServer, settings: Settings): Promise<Row> {
  const total = settings.quick ? 10_000 : 50_000;
  if (!natsServerBinary) return skipped(total, 'skipped: nats-server is not installed (apt-get install nats-server)');
  const runs = settings.slowRuns;
  const url = await freshDatabase(server.url, 'bench_jetstream');
  const admin = await connectedClient(url);
  await admin.query(`${createTableSql(backlogTable)}; ${createTableSql(liveTable)}`);
  const tide = await connectTide(url);
  let nats: NatsServer | undefined;
  let connection: Awaited<ReturnType<typeof connectNats>> | undefined;
  const measurements: Measurement[] = [];
  const latencyRuns: LatencyRun[] = [];
  const notes: string[] = [];
  let live: RelayResult | undefined;
  let payloadBytes = 0;
  try {
    await tide.watch(backlogTable);
    await tide.watch(liveTable);
    for (let from = 1; from <= total; from += 100_000) await admin.query(insertRangeSql(backlogTable), [from, Math.min(total, from + 99_999)]);
    await admin.query('VACUUM ANALYZE pgtide.log');

    // The bare publisher's payloads: the relay's body, message id and headers of each change, read once.
    const changes = await firstValueFrom(tide.changes$(backlogTable, { from: 'beginning' }).pipe(take(total), toArray()));
    const prefix = await msgIdPrefix(tide, backlogTable);
    const bodies = changes.map((change) => encodeChange(change));
    payloadBytes = bodies.reduce((sum, body) => sum + Buffer.byteLength(body), 0) / bodies.length;
    const payloads: Payloads = {
      bodies,
      msgIDs: changes.map((change) => `${prefix}.${change.id}`),
      ops: changes.map((change) => change.op),
      txids: changes.map((change) => change.txid),
      changeIds: changes.map((change) => change.id),
      table: `${changes[0]!.schema}.${changes[0]!.table}`,
    };

    nats = await startNatsServer();
    const natsPid = natsServerPid();
    connection = await connectNats({ servers: nats.url });
    const jsm = await jetstreamManager(connection);

    // (1) Backlog throughput, relay and bare publisher alternating, each run in fresh streams.
    for (let run = 0; run < runs; run += 1) {
      const modes: Mode[] = ['bare', 'relay', 'inbox'];
      const order = modes.map((_, index) => modes[(index + run) % modes.length]!);
      for (const mode of order) {
        // Same-length names and subject prefixes for each.
        const stream = `${mode === 'relay' ? 'JSR' : mode === 'bare' ? 'JSB' : 'JSI'}${run}`;
        const subjectPrefix = stream.toLowerCase();
        await freshStream(jsm, stream, subjectPrefix);
        const args: RelayArgs =
          mode === 'relay'
            ? { mode, url, natsUrl: nats.url, table: backlogTable, total, consumer: `bench-relay-${run}`, stream, subjectPrefix, window, postmaster: server.postmaster, natsPid }
            : { mode: mode as 'bare' | 'inbox', natsUrl: nats.url, total, stream, subject: `${subjectPrefix}.public.${backlogTable}`, window, payloads, natsPid };
        const result = await runJob<RelayResult>('relay', args);
        const state = (await jsm.streams.info(stream)).state;
        if (result.relayed !== total || state.messages !== total || result.duplicates !== 0) {
          throw new Error(`${mode}: ${result.relayed} acknowledged, ${result.duplicates} duplicates, ${state.messages} stored, of ${total}`);
        }
        measurements.push({ ...result, run, streamBytes: state.bytes });
        await jsm.streams.delete(stream);
        if (mode === 'relay') await tide.dropConsumer(`bench-relay-${run}:public.${backlogTable}`);
      }
    }

    // (2) Commit -> fromJetStream latency, the relay in a child process. The backlog's
    // WAL is flushed first, so its checkpoint does not land in the first runs.
    await admin.query('CHECKPOINT');
    const relayJob = new Job('relay', {
      mode: 'live',
      url,
      natsUrl: nats.url,
      table: liveTable,
      consumer: 'bench-live',
      stream: 'JSL',
      subjectPrefix: 'jsl',
      window,
    } satisfies RelayArgs);
    const writer = await connectedClient(url);
    try {
      await relayJob.receive('ready');
      const maxId = Math.ceil(((settings.latencyMs * settings.runs + settings.warmupMs) / 1000) * liveRate) + 1000;
      const sentAt = new Float64Array(maxId + 1);
      const committedAt = new Float64Array(maxId + 1);
      const jsAt = new Float64Array(maxId + 1).fill(Number.NaN);
      const tideAt = new Float64Array(maxId + 1).fill(Number.NaN);
      const publishedAt = new Float64Array(maxId + 1).fill(Number.NaN);
      let jsDuplicates = 0;
      let failure: unknown;
      const idOf = (change: Change) => Number((change.key as { id: unknown }).id);

      let jsCaughtUp!: () => void;
      const jsReady = new Promise<void>((resolve) => (jsCaughtUp = resolve));
      const jsSubscription = jetStreamEvents$(connection, { stream: 'JSL', durable: 'bench-e2e' })
        .pipe(
          tap((event) => event.kind === 'caught-up' && jsCaughtUp()),
          filter((event) => event.kind === 'change'),
          map((event) => event.change),
          tap((change) => {
            const id = idOf(change);
            if (Number.isNaN(jsAt[id]!)) jsAt[id] = nowMs();
            else jsDuplicates += 1;
          }),
          acknowledge(),
        )
        .subscribe({ error: (error: unknown) => (failure ??= error) });
      // Not a consumer: sees each publish as it passes the server (before JetStream stores and acks it).
      const core = connection.subscribe('jsl.>', {
        callback: (error, message) => {
          if (error) return;
          const id = idOf(decodeChange(message.string()));
          if (Number.isNaN(publishedAt[id]!)) publishedAt[id] = nowMs();
        },
      });
      await connection.flush();
      let tideCaughtUp!: () => void;
      const tideReady = new Promise<void>((resolve) => (tideCaughtUp = resolve));
      const tideSubscription = tide.events$(liveTable).subscribe({
        next: (event) => {
          if (event.kind !== 'change') return tideCaughtUp();
          const id = idOf(event.change);
          if (Number.isNaN(tideAt[id]!)) tideAt[id] = nowMs();
        },
        error: (error: unknown) => (failure ??= error),
      });
      await Promise.all([jsReady, tideReady]);

      let nextId = 1;
      const query = { name: 'js_live_insert', text: insertOneSql(liveTable) };
      const measure = async (run: number, durationMs: number): Promise<LatencyRun> => {
        const count = Math.round((durationMs / 1000) * liveRate);
        const from = nextId;
        const rate = await paced(count, liveRate, async () => {
          const id = nextId++;
          sentAt[id] = nowMs();
          await writer.query({ ...query, values: [id] });
          committedAt[id] = nowMs();
        });
        const to = nextId - 1;
        const deadline = nowMs() + 10_000;
        const arrived = (at: Float64Array) => {
          for (let id = from; id <= to; id += 1) if (Number.isNaN(at[id]!)) return false;
          return true;
        };
        while (!(arrived(jsAt) && arrived(tideAt)) && nowMs() < deadline && failure === undefined) await sleep(5);
        if (failure !== undefined) throw failure;
        const of = (at: Float64Array, since: Float64Array) => {
          const samples: number[] = [];
          for (let id = from; id <= to; id += 1) if (!Number.isNaN(at[id]!)) samples.push(at[id]! - since[id]!);
          return samples;
        };
        const insertSamples = of(committedAt, sentAt);
        const jsSamples = of(jsAt, committedAt);
        const tideSamples = of(tideAt, committedAt);
        const fromSend = (samples: number[]) => ({ p50: quantile(samples, 0.5), p99: quantile(samples, 0.99) });
        return {
          run,
          sent: count,
          rate,
          insertMs: { p50: quantile(insertSamples, 0.5), mean: insertSamples.reduce((sum, ms) => sum + ms, 0) / insertSamples.length },
          jetstream: { ...latencyOf(jsSamples), lost: count - jsSamples.length },
          changes: { ...latencyOf(tideSamples), lost: count - tideSamples.length },
          jetstreamFromSend: fromSend(of(jsAt, sentAt)),
          changesFromSend: fromSend(of(tideAt, sentAt)),
          published: fromSend(of(publishedAt, committedAt)),
        };
      };
      await measure(-1, settings.warmupMs);
      for (let run = 0; run < settings.runs; run += 1) latencyRuns.push(await measure(run, settings.latencyMs));
      jsSubscription.unsubscribe();
      tideSubscription.unsubscribe();
      core.unsubscribe();
      relayJob.send('stop');
      live = await relayJob.result<RelayResult>();
      if (jsDuplicates > 0) notes.push(`fromJetStream delivered ${jsDuplicates} change(s) twice (redeliveries)`);
    } finally {
      relayJob.kill();
      await writer.end();
    }
  } finally {
    await tide.close();
    await admin.end();
    await connection?.close();
    await nats?.stop();
  }

  const of = (mode: Mode) => measurements.filter((m) => m.mode === mode);
  const relayRuns = of('relay');
  const bareRuns = of('bare');
  const inboxRuns = of('inbox');
  const pairRatio = (value: (m: Measurement) => number, baseline: Measurement[] = bareRuns) =>
    summarize(relayRuns.map((m) => value(m) / value(baseline.find((other) => other.run === m.run)!)));
  const ratio = pairRatio((m) => m.rate);
  const perChange = (value: (m: Measurement) => number, runs: Measurement[]) => summarize(runs.map((m) => (value(m) * 1000) / total)).median;
  const latencyFigure = (metric: 'p50' | 'p99'): Figure => ({
    metric: `${metric} commit -> fromJetStream`,
    unit: 'ms',
    pgtide: summarize(latencyRuns.map((run) => run.jetstream[metric])),
    baselines: [
      {
        name: 'commit -> changes$ (same writes)',
        value: summarize(latencyRuns.map((run) => run.changes[metric])),
        ratio: summarize(latencyRuns.map((run) => run.jetstream[metric] / run.changes[metric])),
      },
    ],
  });
  const lost = latencyRuns.filter((run) => run.jetstream.lost > 0 || run.changes.lost > 0);
  if (lost.length > 0) notes.push(`${lost.length} latency run(s) did not receive every change within 10 s: ${JSON.stringify(lost)}`);
  const warnings = [...new Set([...measurements.flatMap((m) => m.warnings), ...(live?.warnings ?? [])])];
  if (warnings.length > 0) notes.push(`relay warnings: ${warnings.join(' | ')}`);
  const fromSend = (pick: (run: LatencyRun) => number): Summary => summarize(latencyRuns.map(pick));
  notes.push(
    `CPU µs per change (medians): relay process ${perChange((m) => m.cpuMs, relayRuns).toFixed(1)}, bare publisher ${perChange((m) => m.cpuMs, bareRuns).toFixed(1)}, ` +
      `inbox publisher ${perChange((m) => m.cpuMs, inboxRuns).toFixed(1)}; ` +
      `nats-server ${perChange((m) => m.natsCpuMs, relayRuns).toFixed(1)} / ${perChange((m) => m.natsCpuMs, bareRuns).toFixed(1)} / ${perChange((m) => m.natsCpuMs, inboxRuns).toFixed(1)}; ` +
      `PostgreSQL ${perChange((m) => m.postgresCpuMs, relayRuns).toFixed(1)} / ${perChange((m) => m.postgresCpuMs, bareRuns).toFixed(1)} (relay / bare[ / inbox], over the timed span)`,
    `relay call -> registered ${summarize(relayRuns.map((m) => m.startupMs)).median.toFixed(0)} ms, -> first JetStream ack ${summarize(relayRuns.map((m) => m.firstMs)).median.toFixed(0)} ms; ` +
      `stream bytes relay/bare ${pairRatio((m) => m.streamBytes).median.toFixed(3)}; avg body ${payloadBytes.toFixed(0)} B; ` +
      `fromJetStream from send: p50 ${fromSend((run) => run.jetstreamFromSend.p50).median.toFixed(2)} ms, p99 ${fromSend((run) => run.jetstreamFromSend.p99).median.toFixed(2)} ms; ` +
      `commit -> the relay's publish at a core NATS subscriber: p50 ${fromSend((run) => run.published.p50).median.toFixed(2)} ms, p99 ${fromSend((run) => run.published.p99).median.toFixed(2)} ms`,
  );
  return {
    id: 'jetstream',
    scenario: `JetStream bridge: ${total / 1000}k backlog relayToJetStream(window ${window}) into a fresh stream; commit -> fromJetStream at ${liveRate}/s`,
    figures: [
      {
        metric: 'changes/s relayed (JetStream acked)',
        unit: '/s',
        pgtide: summarize(relayRuns.map((m) => m.rate)),
        baselines: [
          { name: `bare jetstream().publish, ${window} in flight`, value: summarize(bareRuns.map((m) => m.rate)), ratio },
          {
            name: `bare core publish, acks on one inbox (the relay's way), ${window} in flight`,
            value: summarize(inboxRuns.map((m) => m.rate)),
            ratio: pairRatio((m) => m.rate, inboxRuns),
          },
        ],
      },
      latencyFigure('p50'),
      latencyFigure('p99'),
    ],
    target: '>= 0.70x bare publish',
    met: ratio.median >= 0.7 && lost.length === 0,
    notes,
    extra: {
      window,
      liveRate,
      total,
      payloadBytes,
      measurements: measurements.map(({ warnings: _warnings, ...rest }) => rest),
      latencyRuns,
      live,
    },
  };
}
