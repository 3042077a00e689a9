import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { decodeChange } from '../../src/codec.js';
import { relayHeaders } from '../../src/nats.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';
import { natsServerBinary, startNatsServer, type NatsServer } from '../nats-server.js';
import { DeliveryChecker } from './checker.js';
import { between, seeded } from './seeded.js';

/**
 * The JetStream relay under faults, against a real `nats-server -js` and real processes:
 * while four writers commit 10,000 changes over 100 rows (inserts, then updates that
 * count each row's `seq` up in commit order), the relay process (`relay-child.ts`) is
 * SIGKILLed 3 times and restarted (a fresh process with the same consumer name, which
 * takes over once the killed one's lease expired), and nats-server is restarted once
 * (SIGTERM, down 1.2-2.2 s, longer than the publish timeout, so publishes in flight time out
 * and are tried again; the relay's connection reconnects by itself). The faults come at
 * seeded moments (`PGTIDE_TEST_SEED`), some while a relay that just took over, or just
 * reconnected, works through a backlog. Afterwards the stream holds every committed change
 * exactly once by `Nats-Msg-Id` (what a killed relay had not yet acknowledged is published
 * again and JetStream drops it as a duplicate), each row's changes in commit order, with the
 * relay's headers; the table prints produced / stored / duplicates / lost / out-of-order.
 */

const describeWithNats = natsServerBinary ? describe : describe.skip;

const table = 'relay_rows';
const consumer = 'to-jetstream';
const streamName = 'RELIABILITY';
const subjectPrefix = 'rel';
const leaseTimeout = 1_000;
const acknowledgeFlushDelay = 20;
/** Far longer than the test: every redelivery must be recognised. */
const duplicateWindow = 10 * 60_000;
const relayWindow = 64;
/** Shorter than nats-server's downtime: publishes in flight then time out and are tried again. */
const publishTimeout = 1_000;
const rows = 100;
const total = 10_000;
const writers = 4;
const batch = 10; // changes per transaction
const perWriter = total / writers;
/** Rows inserted before the updates begin; the others are inserted one by one while the writers run. */
const initialRows = 50;
/** Aimed-at writing time (ms); the writes also wait at gates until each fault is done, so faults land mid-stream. */
const writeMs = Number(process.env.PGTIDE_RELAY_WRITE_MS ?? 8_000);
const seed = Number(process.env.PGTIDE_TEST_SEED ?? 20_240_613);

const childScript = fileURLToPath(new URL('./relay-child.ts', import.meta.url));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface RelayReport {
  readonly relayed: number;
  readonly duplicates: number;
  readonly retries: number;
  readonly inFlight: number;
  readonly phase: string;
  readonly lastError?: string;
  /** When the relay sent it (its `Date.now()`: the same clock as ours). */
  readonly sentAt: number;
  /** When it arrived. */
  readonly seenAt: number;
}

interface RelayChild {
  readonly name: string;
  readonly process: ChildProcess;
  readonly pid: number;
  readonly state: {
    ready: boolean;
    status?: RelayReport;
    /** Every status report, in order. */
    history: RelayReport[];
    killSentAt?: number;
    /** The last status it reported before its kill. */
    statusAtKill?: RelayReport;
    stopping?: boolean;
    exit?: { code: number | null; signal: NodeJS.Signals | null };
    disconnects: number;
    reconnects: number;
    /** When the relay's NATS connection last reconnected (its clock). */
    reconnectedAt?: number;
    publishWarnings: number;
  };
  readonly errors: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

let db: TestDatabase;
let tide: Tide;
let server: NatsServer | undefined;
let nats: NatsConnection | undefined;
const children: RelayChild[] = [];
/** Set when a relay exits without being told to: every wait fails with it. */
let failure: Error | undefined;

beforeAll(async () => {
  if (!natsServerBinary) return;
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, seq int NOT NULL)`);
  tide = await db.tide({ pruneInterval: 0 });
  await tide.watch(table); // capture before the first write
  server = await startNatsServer();
  nats = await connectNats({ servers: server.url, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
});
afterAll(async () => {
  for (const child of children) if (child.state.exit === undefined) child.process.kill('SIGKILL');
  await Promise.all(children.map((child) => child.exited));
  await nats?.close();
  await server?.stop();
  await db?.drop();
});

function startRelay(name: string): RelayChild {
  const args = [
    childScript,
    db.url,
    server!.url,
    table,
    consumer,
    streamName,
    subjectPrefix,
    String(leaseTimeout),
    String(acknowledgeFlushDelay),
    String(duplicateWindow),
    String(relayWindow),
    String(publishTimeout),
  ];
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
  const state: RelayChild['state'] = { ready: false, history: [], disconnects: 0, reconnects: 0, publishWarnings: 0 };
  const errors: string[] = [];
  // The relay warns once per failed publish (many while nats-server is down): count those, show the rest.
  let partial = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (line.includes('publishing to JetStream failed')) state.publishWarnings += 1;
      else if (/^\s*(error|change|\})/.test(line)) continue; // the rest of a counted warning's meta
      else if (line.trim() !== '') process.stderr.write(`[${name}] ${line}\n`);
    }
  });
  child.on('message', (message: { type?: string; status?: string; code?: string; message?: string; at?: number } & Partial<RelayReport>) => {
    if (message.type === 'ready') state.ready = true;
    else if (message.type === 'status') {
      state.status = {
        relayed: message.relayed ?? 0,
        duplicates: message.duplicates ?? 0,
        retries: message.retries ?? 0,
        inFlight: message.inFlight ?? 0,
        phase: message.phase ?? '?',
        ...(message.lastError !== undefined ? { lastError: message.lastError } : {}),
        sentAt: message.at ?? Date.now(),
        seenAt: Date.now(),
      };
      state.history.push(state.status);
    } else if (message.type === 'nats') {
      if (message.status === 'disconnect') state.disconnects += 1;
      else if (message.status === 'reconnect') {
        state.reconnects += 1;
        state.reconnectedAt = message.at ?? Date.now();
      }
    } else if (message.type === 'error') errors.push(`${message.code ?? 'raw'}: ${message.message ?? ''}`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      state.exit = { code, signal };
      if (state.killSentAt === undefined && !state.stopping && !failure) {
        failure = new Error(`relay ${name} (pid ${child.pid}) exited by itself (code ${code}, signal ${signal}); errors: ${errors.join('; ') || 'none reported'}`);
      }
      resolve({ code, signal });
    }),
  );
  const started: RelayChild = { name, process: child, pid: child.pid!, state, errors, exited };
  children.push(started);
  return started;
}

/** `eventually`, failing at once when a relay died by itself. */
function until(check: () => boolean | Promise<boolean>, what: string, timeout = 20_000): Promise<void> {
  return eventually(async () => {
    if (failure) throw failure;
    return check();
  }, what, timeout);
}

/** Every message of the stream, in stream order, through an ordered consumer. */
async function readStream(jsm: JetStreamManager): Promise<Array<{ seq: number; subject: string; msgId: string; headers: Map<string, string>; body: string }>> {
  const info = await jsm.streams.info(streamName);
  const { first_seq: first, last_seq: last, messages: count } = info.state;
  const found: Array<{ seq: number; subject: string; msgId: string; headers: Map<string, string>; body: string }> = [];
  if (count === 0) return found;
  const ordered = await jetstream(nats!).consumers.get(streamName);
  const iterator = await ordered.consume({ max_messages: 1_000 });
  for await (const message of iterator) {
    const headers = new Map<string, string>();
    for (const name of Object.values(relayHeaders)) headers.set(name, message.headers?.get(name) ?? '');
    found.push({ seq: message.seq, subject: message.subject, msgId: message.headers?.get('Nats-Msg-Id') ?? '', headers, body: message.string() });
    if (message.seq >= last) break;
  }
  await iterator.close();
  expect(found[0]?.seq).toBe(first);
  return found;
}

describeWithNats('JetStream relay under faults', () => {
  it(
    '10,000 changes over 100 rows, the relay SIGKILLed 3 times and nats-server restarted once: every change stored exactly once, rows in order',
    { timeout: 60_000 },
    async () => {
      const begun = Date.now();
      const random = seeded(seed);
      const pick = between(random);
      // Four faults, one of them (seeded) the nats-server restart. Each comes either once the
      // writes reach a seeded share of the total (one window per fault), or `soon`: as soon as the
      // relay has relayed a seeded few changes since the fault before was over: while a relay that
      // just took over works through the backlog the lease wait left, or while one catches up after
      // the nats-server restart. The first is never soon; at least one kill is.
      const windows: Array<[number, number]> = [
        [0.08, 0.2],
        [0.3, 0.42],
        [0.52, 0.64],
        [0.74, 0.86],
      ];
      const natsSlot = Math.floor(random() * windows.length);
      const faults = windows.map(([low, high], index) => ({
        kind: index === natsSlot ? ('nats restart' as const) : ('kill' as const),
        soon: index > 0 && random() < 0.5,
        at: Math.floor(pick(low, high) * total),
        soonAfter: 1 + Math.floor(pick(0, 400)),
        delayMs: Math.floor(pick(0, 200)),
        downMs: Math.floor(pick(1_200, 2_200)),
      }));
      if (!faults.some((fault) => fault.soon && fault.kind === 'kill')) {
        const kills = faults.filter((fault, index) => index > 0 && fault.kind === 'kill');
        kills[Math.floor(random() * kills.length)]!.soon = true;
      }
      const describeFault = (fault: (typeof faults)[number]) =>
        `${fault.kind} ${fault.soon ? `soon (${fault.soonAfter} relayed after the fault before)` : `at ${fault.at} +${fault.delayMs} ms`}` +
        (fault.kind === 'nats restart' ? ` (down ${fault.downMs} ms)` : '');
      console.log(`nats-relay: seed ${seed}; faults: ${faults.map(describeFault).join(', ')}; ${total} changes`);
      /** While fault `index` is pending, the writes may not pass the point of the next fault that waits for one. */
      const gateAfter = (index: number) => faults.find((fault, later) => later > index && !fault.soon)?.at ?? Number.POSITIVE_INFINITY;

      // The first relay creates the stream.
      let current = startRelay('R1');
      await until(() => current.state.ready, 'R1 is ready');
      const jsm = await jetstreamManager(nats!);
      const config = (await jsm.streams.info(streamName)).config;
      expect(config.duplicate_window / 1e6).toBe(duplicateWindow);
      expect(config.subjects).toEqual([`${subjectPrefix}.>`]);

      // ---- Writers. Writer w inserts the initial rows id % 4 = w, then transactions of 10 changes:
      // updates of rows chosen from the initial ones (every writer's: rows are contended, locked in
      // id order) and its own inserted late rows, plus now and then the insert of one of its late rows.
      const committed: Array<{ key: number; seq: number }> = [];
      let gate = gateAfter(0);
      let stopWriting = false;
      const clients = await Promise.all(
        Array.from({ length: writers }, async () => {
          const client = new pg.Client({ connectionString: db.url });
          await client.connect();
          return client;
        }),
      );
      const transaction = async (client: pg.Client, statements: Array<[string, unknown[]]>) => {
        for (;;) {
          try {
            await client.query('BEGIN');
            const results: Array<{ id: number; seq: number }> = [];
            for (const [text, values] of statements) results.push(...(await client.query(text, values)).rows);
            await client.query('COMMIT');
            return results;
          } catch (error) {
            await client.query('ROLLBACK').catch(() => undefined);
            if (!['40P01', '40001'].includes((error as { code?: string }).code ?? '')) throw error;
          }
        }
      };
      const writeStart = Date.now();
      const writing = Promise.all(
        clients.map(async (client, writer) => {
          const choose = seeded(seed + 1 + writer);
          const initial = Array.from({ length: rows }, (_, id) => id).filter((id) => id < initialRows && id % writers === writer);
          const late = Array.from({ length: rows }, (_, id) => id).filter((id) => id >= initialRows && id % writers === writer);
          const shared = Array.from({ length: initialRows }, (_, id) => id);
          const inserted: number[] = [];
          let done = 0;
          const record = (results: Array<{ id: number; seq: number }>) => {
            for (const row of results) committed.push({ key: row.id, seq: row.seq });
            done += results.length;
          };
          record(await transaction(client, [[`INSERT INTO ${table} SELECT unnest($1::int[]), 0 RETURNING id, seq`, [initial]]]));
          const insertEvery = Math.floor((perWriter - done) / batch / (late.length + 1));
          for (let round = 0; done < perWriter; round += 1) {
            await until(() => stopWriting || committed.length + batch <= gate, 'the writes pass the next gate', 45_000);
            if (stopWriting) return;
            const due = writeStart + (done / perWriter) * writeMs;
            if (due > Date.now()) await sleep(due - Date.now());
            const size = Math.min(batch, perWriter - done);
            const statements: Array<[string, unknown[]]> = [];
            if (round % insertEvery === insertEvery - 1 && inserted.length < late.length && size > 1) {
              const id = late[inserted.length]!;
              inserted.push(id);
              statements.push([`INSERT INTO ${table} VALUES ($1, 0) RETURNING id, seq`, [id]]);
            }
            const eligible = [...shared, ...inserted];
            const ids = new Set<number>();
            while (ids.size < size - statements.length) ids.add(eligible[Math.floor(choose() * eligible.length)]!);
            statements.push([
              `UPDATE ${table} t SET seq = t.seq + 1
                 FROM (SELECT id FROM ${table} WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE) l
                WHERE t.id = l.id RETURNING t.id, t.seq`,
              [[...ids]],
            ]);
            record(await transaction(client, statements));
          }
          // The schedule inserts every late row before the writer's last round.
          expect(inserted).toHaveLength(late.length);
        }),
      ).finally(() => Promise.all(clients.map((client) => client.end())));

      // ---- Faults.
      let kills = 0;
      let natsRestarts = 0;
      const natsDowntimes: number[] = [];
      const relayedBy = (child: RelayChild) => child.state.status?.relayed ?? 0;
      /** What the relay running had relayed when the fault before was over. */
      let baseline = 0;
      const faulting = (async () => {
        for (const [index, fault] of faults.entries()) {
          if (fault.soon) {
            const relay = current;
            const wanted = baseline + fault.soonAfter;
            await until(() => relayedBy(relay) >= wanted, `${relay.name} relays ${wanted} (fault ${index + 1})`);
          } else {
            await until(() => committed.length >= fault.at, `the writes reach fault ${index + 1}`, 45_000);
            await sleep(fault.delayMs);
          }
          // The relay now running has taken over and relayed something: each fault hits a working relay.
          await until(() => relayedBy(current) > 0, `${current.name} relays`);
          if (fault.kind === 'kill') {
            current.state.killSentAt = Date.now();
            if (current.state.status) current.state.statusAtKill = current.state.status;
            current.process.kill('SIGKILL');
            expect(await current.exited).toMatchObject({ signal: 'SIGKILL' });
            kills += 1;
            current = startRelay(`R${kills + 1}`);
            await until(() => current.state.ready, `${current.name} is ready`);
          } else {
            const relay = current;
            const down = Date.now();
            await server!.restart({ downMs: fault.downMs });
            natsDowntimes.push(Date.now() - down);
            natsRestarts += 1;
            // Recovered: a report sent after the reconnect counts more than any report sent before the server went down.
            await until(() => relay.state.reconnectedAt !== undefined && relay.state.reconnectedAt >= down, `${relay.name} reconnects`);
            const before = relay.state.history.filter((report) => report.sentAt <= down).at(-1)?.relayed ?? 0;
            await until(
              () => relay.state.history.some((report) => report.sentAt >= relay.state.reconnectedAt! && report.relayed > before),
              `${relay.name} relays again after the nats-server restart`,
            );
          }
          baseline = relayedBy(current);
          gate = gateAfter(index + 1);
        }
        gate = Number.POSITIVE_INFINITY;
      })();
      writing.catch(() => undefined);
      faulting.catch(() => undefined);
      try {
        await Promise.all([writing, faulting]);
      } finally {
        stopWriting = true;
      }
      const writtenMs = Date.now() - writeStart;
      expect(committed).toHaveLength(total);

      // ---- The last relay stores the rest; then it settles (nothing in flight, no new acks) and stops cleanly.
      await until(async () => (await jsm.streams.info(streamName)).state.messages >= total, 'the stream holds as many messages as were committed', 30_000);
      const drainedMs = Date.now() - writeStart;
      const last = current;
      await until(
        () => last.state.status !== undefined && last.state.status.inFlight === 0 && Date.now() - last.state.status.seenAt > 300,
        `${last.name} settles`,
      );
      last.state.stopping = true;
      last.process.send('stop');
      expect(await last.exited, `${last.name} stops cleanly`).toEqual({ code: 0, signal: null });
      const ranMs = Date.now() - begun;

      // ---- What the stream holds.
      const { rows: identityRows } = await db.pool.query<{ identity: string; relid: string }>(
        `SELECT (SELECT e.system_identifier::text FROM "${tide.schema}".eras e ORDER BY e.era DESC LIMIT 1) || '.' ||
                (SELECT d.oid::text FROM pg_database d WHERE d.datname = current_database()) AS identity,
                $1::regclass::oid::text AS relid`,
        [table],
      );
      const prefix = `${identityRows[0]!.identity}.${identityRows[0]!.relid}.`;
      const { rows: logged } = await db.pool.query<{ id: string }>(`SELECT id::text FROM "${tide.schema}".log WHERE relid = $1::regclass ORDER BY id`, [table]);
      const expectedIds = new Set(logged.map((row) => `${prefix}${row.id}`));
      expect(expectedIds.size).toBe(total);

      const messages = await readStream(jsm);
      const checker = new DeliveryChecker(`relay to JetStream, SIGKILL x${kills}, nats restart x${natsRestarts} (seed ${seed})`);
      for (const { key, seq } of committed) checker.produce(key, seq);
      const seenIds = new Map<string, number>();
      const malformed: string[] = [];
      for (const message of messages) {
        seenIds.set(message.msgId, (seenIds.get(message.msgId) ?? 0) + 1);
        const change = decodeChange<{ id: number; seq: number }>(message.body);
        const key = change.key['id'] as number;
        const seq = change.new!.seq;
        checker.deliver(key, seq);
        const wrong = [
          message.msgId !== `${prefix}${change.id}` && `Nats-Msg-Id ${message.msgId}`,
          message.subject !== `${subjectPrefix}.public.${table}` && `subject ${message.subject}`,
          message.headers.get(relayHeaders.op) !== change.op && `op header ${message.headers.get(relayHeaders.op)}`,
          change.op !== (seq === 0 ? 'insert' : 'update') && `op ${change.op} for seq ${seq}`,
          message.headers.get(relayHeaders.table) !== `public.${table}` && `table header ${message.headers.get(relayHeaders.table)}`,
          message.headers.get(relayHeaders.txid) !== change.txid && `txid header ${message.headers.get(relayHeaders.txid)}`,
          message.headers.get(relayHeaders.changeId) !== change.id && `change id header ${message.headers.get(relayHeaders.changeId)}`,
        ].filter(Boolean);
        if (wrong.length > 0 && malformed.length < 10) malformed.push(`stream seq ${message.seq} (change ${change.id}): ${wrong.join(', ')}`);
      }
      const byRow = checker.counts();
      const lostIds = [...expectedIds].filter((id) => !seenIds.has(id));
      const duplicateIds = [...seenIds.values()].reduce((sum, times) => sum + times - 1, 0);
      const strangers = [...seenIds.keys()].filter((id) => !expectedIds.has(id));
      const relaySide = children.reduce(
        (sum, child) => ({
          relayed: sum.relayed + (child.state.status?.relayed ?? 0),
          duplicates: sum.duplicates + (child.state.status?.duplicates ?? 0),
          retries: sum.retries + (child.state.status?.retries ?? 0),
        }),
        { relayed: 0, duplicates: 0, retries: 0 },
      );
      const counts = {
        scenario: checker.scenario,
        produced: byRow.produced,
        stored: messages.length,
        duplicates: duplicateIds,
        lost: lostIds.length,
        outOfOrder: byRow.outOfOrder,
        kills,
        natsRestarts,
        relayDuplicatesDropped: relaySide.duplicates,
        relayRetries: relaySide.retries,
      };
      console.table([counts]);
      console.table(
        children.map((child) => ({
          relay: child.name,
          pid: child.pid,
          relayed: child.state.status?.relayed ?? 0,
          'duplicates dropped': child.state.status?.duplicates ?? 0,
          retries: child.state.status?.retries ?? 0,
          'publish warnings': child.state.publishWarnings,
          'nats reconnects': child.state.reconnects,
          end: child.state.killSentAt !== undefined ? 'SIGKILL' : 'stopped',
          'in flight at kill (last report)': child.state.statusAtKill?.inFlight ?? '-',
        })),
      );
      console.log(
        `nats-relay: seed ${seed}, ${counts.produced} produced, ${counts.stored} stored, ${counts.duplicates} duplicates, ${counts.lost} lost, ` +
          `${counts.outOfOrder} out of order, ${kills} kills, ${natsRestarts} nats-server restarts (${natsDowntimes.join(', ')} ms down); ` +
          `relays: ${relaySide.relayed} acks, ${relaySide.duplicates} duplicates dropped, ${relaySide.retries} retries; ` +
          `written in ${writtenMs} ms, all stored at ${drainedMs} ms, ${ranMs} ms in all`,
      );
      if (checker.problems.length > 0) console.log('nats-relay problems:', checker.problems);
      if (lostIds.length > 0) console.log('nats-relay lost message ids:', lostIds.slice(0, 10));
      if (malformed.length > 0) console.log('nats-relay malformed messages:', malformed);

      expect(counts).toMatchObject({ produced: total, stored: total, duplicates: 0, lost: 0, outOfOrder: 0, kills: 3, natsRestarts: 1 });
      expect(byRow).toMatchObject({ delivered: total, duplicates: 0, lost: 0 });
      expect(strangers).toEqual([]);
      expect(malformed).toEqual([]);
      expect(checker.problems).toEqual([]);
      // What each relay stored anew (acks not marked duplicate) adds up to at most the stream (reports of killed relays may lag).
      expect(relaySide.relayed - relaySide.duplicates).toBeLessThanOrEqual(total);
      for (const child of children) expect(child.errors, `${child.name} errors`).toEqual([]);

      // The table agrees (one write per insert and per update), and the clean stop saved the position.
      const { rows: sums } = await db.pool.query(`SELECT count(*)::int AS rows, sum(seq + 1)::int AS writes FROM ${table}`);
      expect(sums[0]).toEqual({ rows, writes: total });
      const position = (await tide.consumers()).find((entry) => entry.name === `${consumer}:public.${table}`);
      expect(position?.lagChanges).toBe(0);
    },
  );
});
