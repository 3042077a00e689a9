import { DiscardPolicy, jetstreamManager, jetstream } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node';
import { firstValueFrom, filter, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processChanges } from '../../operators/processChanges.js';
import { acknowledge } from '../../operators/acknowledge.js';
import type { Change, Tide } from '../../src/index.js';
import { PgTideError } from '../../src/index.js';
import { fromJetStream, jetStreamEvents$, relayHeaders, relayToJetStream, subjectToken } from '../../src/nats.js';
import { createTestDatabase, eventually, quietLogger, type TestDatabase } from '../helpers.js';
import { natsServerBinary, startNatsServer, type NatsServer } from '../nats-server.js';

// The JetStream bridge against a real nats-server -js (started here on a free port) and
// a real PostgreSQL.

const describeWithNats = natsServerBinary ? describe : describe.skip;

let db: TestDatabase;
let server: NatsServer;
let nats: NatsConnection;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  server = await startNatsServer();
  nats = await connectNats({ servers: server.url });
  await db.pool.query(`CREATE TABLE accounts (
    id bigint PRIMARY KEY, name text, balance numeric, seen timestamptz, avatar bytea, doc jsonb, ratio float8, tags text[])`);
  await db.pool.query('CREATE TABLE "odd.name" (id int PRIMARY KEY)');
  await db.pool.query('CREATE TABLE ledger (id int PRIMARY KEY, name text)');
  tide = await db.tide({ pruneInterval: 0, acknowledgeFlushDelay: 10, leaseTimeout: 1000 });
});

afterAll(async () => {
  await tide?.close();
  await nats?.close();
  await server?.stop();
  await db?.drop();
});

/** Every message of a stream, in stream order. */
async function streamMessages(stream: string) {
  const jsm = await jetstreamManager(nats);
  const info = await jsm.streams.info(stream);
  const found = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq += 1) {
    const message = await jsm.streams.getMessage(stream, { seq });
    if (message) found.push(message);
  }
  return found;
}

describeWithNats('relayToJetStream and fromJetStream', () => {
  it('relays each change once, with a stable Nats-Msg-Id and headers, and fromJetStream decodes the same values changes$ delivers', async () => {
    const direct = firstValueFrom(tide.changes$('accounts').pipe(take(3), toArray()));
    await new Promise((resolve) => setTimeout(resolve, 100));
    const relay = await relayToJetStream(tide, { tables: ['accounts'], consumer: 'to-nats', nats, stream: 'T1', subjectPrefix: 't1' });
    await db.pool.query(
      `INSERT INTO accounts VALUES (9007199254740993, 'ann', 12345678901234567890.123, '2026-12-01 10:00:00.123456+00', '\\x00ff10',
        '{"$pgtide": "not a tag", "n": 1.5}', 'NaN', '{"a,b", "c\\"d"}')`,
    );
    await db.pool.query(`UPDATE accounts SET balance = -0.5, ratio = '-Infinity' WHERE id = 9007199254740993`);
    await db.pool.query(`DELETE FROM accounts`);
    const expected = await direct;
    await eventually(() => relay.status().relayed === 3, 'three changes relayed');

    const messages = await streamMessages('T1');
    expect(messages).toHaveLength(3);
    expect(messages.map((message) => message.subject)).toEqual(['t1.public.accounts', 't1.public.accounts', 't1.public.accounts']);
    expect(messages.map((message) => message.header.get(relayHeaders.op))).toEqual(['insert', 'update', 'delete']);
    expect(messages[0]!.header.get(relayHeaders.table)).toBe('public.accounts');
    expect(messages[0]!.header.get(relayHeaders.txid)).toBe(expected[0]!.txid);
    const ids = messages.map((message) => message.header.get('Nats-Msg-Id'));
    expect(new Set(ids).size).toBe(3);
    expect(ids[0]).toMatch(new RegExp(`^\\d+\\.\\d+\\.\\d+\\.${expected[0]!.id}$`));

    const read = await firstValueFrom(
      fromJetStream(nats, { stream: 'T1', durable: 'reader' }).pipe(acknowledge(), take(3), toArray()),
    );
    expect(read).toEqual(expected);
    expect(read[0]!.new!.avatar).toBeInstanceOf(Buffer);
    expect(Number.isNaN(read[0]!.new!.ratio)).toBe(true);
    expect(read[0]!.new!.doc).toEqual({ $pgtide: 'not a tag', n: 1.5 });
    await relay.close();
    expect(relay.status().phase).toBe('stopped');
    await eventually(async () => (await (await jetstreamManager(nats)).consumers.info('T1', 'reader')).num_ack_pending === 0, 'acks reached JetStream');
  });

  it('goes on after a restart where it stopped, and JetStream drops what it relays twice', async () => {
    const options = { tables: ['ledger'], consumer: 'again', nats, stream: 'T2', subjectPrefix: 't2' } as const;
    const first = await relayToJetStream(tide, options);
    await db.pool.query(`INSERT INTO ledger SELECT g, 'n' || g FROM generate_series(1, 50) g`);
    await eventually(() => first.status().relayed === 50, 'first relay relayed 50');
    await first.close();
    // The consumer's position survives; a relay that starts over relays only what is new.
    await db.pool.query(`UPDATE ledger SET name = 'changed'`);
    const second = await relayToJetStream(tide, options);
    await eventually(() => second.status().relayed === 50, 'second relay relayed the 50 updates');
    expect(second.status().duplicates).toBe(0);
    await second.close();
    // A relay whose position was lost (a consumer restored from an older backup, say)
    // relays everything again: JetStream knows every message id and keeps one copy.
    await tide.dropConsumer('again:public.ledger');
    const replayed = await relayToJetStream(tide, { ...options, from: 'beginning' });
    await eventually(() => replayed.status().relayed === 100, 'the replayed relay relayed all 100 again');
    expect(replayed.status().duplicates).toBe(100);
    await replayed.close();
    const messages = await streamMessages('T2');
    expect(messages).toHaveLength(100);
    expect(new Set(messages.map((message) => message.header.get('Nats-Msg-Id'))).size).toBe(100);
  });

  it('tries a publish again when JetStream refuses it, no stream takes its subject, or its ack never comes, and stores each change once', async () => {
    const jsm = await jetstreamManager(nats);
    await db.pool.query('CREATE TABLE retried (id int PRIMARY KEY, n int)');
    await jsm.streams.add({ name: 'T4', subjects: ['t4.>'], max_msgs: 5, discard: DiscardPolicy.New });
    const relay = await relayToJetStream(tide, {
      tables: ['retried'],
      consumer: 'retried',
      nats,
      stream: 'T4',
      subjectPrefix: 't4',
      publishTimeout: 300,
      backoff: () => 50,
      // Each failure is warned about: expected here.
      logger: { ...quietLogger, warn: () => undefined },
    });
    await db.pool.query('INSERT INTO retried SELECT g, 0 FROM generate_series(1, 10) g');
    // A full stream (discard new) refuses the rest: an error ack.
    await eventually(() => /refused/.test(relay.status().lastError ?? ''), 'a refused publish was reported');
    expect(relay.status().relayed).toBe(5);
    await jsm.streams.update('T4', { max_msgs: -1 });
    await eventually(() => relay.status().relayed === 10, 'the refused changes relayed once the stream takes them');

    // No stream at all: the server answers "no responders".
    await jsm.streams.delete('T4');
    await db.pool.query('UPDATE retried SET n = 1 WHERE id <= 3');
    await eventually(() => /no responders/.test(relay.status().lastError ?? ''), 'no responders reported');
    // A plain subscriber that never answers: the ack times out.
    const silent = nats.subscribe('t4.>');
    await eventually(() => /did not acknowledge/.test(relay.status().lastError ?? ''), 'a timed out ack reported');
    silent.unsubscribe();
    await jsm.streams.add({ name: 'T4', subjects: ['t4.>'] });
    await eventually(() => relay.status().relayed === 13, 'the updates relayed once the stream is back');
    expect(relay.status().inFlight).toBe(0);
    expect(relay.status().retries).toBeGreaterThan(3);
    await relay.close();
    const stored = await streamMessages('T4');
    expect(stored.map((message) => message.header.get(relayHeaders.op))).toEqual(['update', 'update', 'update']);
    expect(new Set(stored.map((message) => message.header.get('Nats-Msg-Id'))).size).toBe(3);
  });

  it('percent-encodes names into one subject token', () => {
    expect(subjectToken('odd.name')).toBe('odd%2Ename');
    expect(subjectToken('a b>*')).toBe('a%20b%3E%2A');
    expect(subjectToken('ok_name-1')).toBe('ok_name-1');
  });

  it('refuses a stream that does not take its subjects, and warns when its duplicate window is too short', async () => {
    const jsm = await jetstreamManager(nats);
    await jsm.streams.add({ name: 'OTHER', subjects: ['elsewhere.>'] });
    await expect(relayToJetStream(tide, { tables: ['accounts'], consumer: 'x', nats, stream: 'OTHER' })).rejects.toMatchObject({
      code: 'NATS_STREAM_MISMATCH',
    });
    await expect(relayToJetStream(tide, { tables: ['accounts'], consumer: 'x', nats, stream: 'MISSING', createStream: false })).rejects.toBeInstanceOf(
      PgTideError,
    );
    await expect(relayToJetStream(tide, { tables: [], consumer: 'x', nats })).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
    await jsm.streams.add({ name: 'SHORT', subjects: ['short.>'], duplicate_window: nanos(1000) });
    const warnings: string[] = [];
    const logger = { ...quietLogger, warn: (message: string) => warnings.push(message) };
    const relay = await relayToJetStream(tide, { tables: ['accounts'], consumer: 'short', nats, stream: 'SHORT', subjectPrefix: 'short', logger });
    await relay.close();
    expect(warnings.some((warning) => /duplicate_window/.test(warning) && /stored twice/.test(warning))).toBe(true);
  });

  it('fromJetStream: processChanges acknowledges or terminates messages, members of one durable share them, and caught-up comes when none are pending', async () => {
    const relay = await relayToJetStream(tide, { tables: ['"odd.name"'], consumer: 'odd', nats, stream: 'T3', subjectPrefix: 't3' });
    await db.pool.query('INSERT INTO "odd.name" SELECT generate_series(1, 40)');
    await eventually(() => relay.status().relayed === 40, 'relayed 40');
    const handled: Array<{ member: string; id: number }> = [];
    const failures: unknown[] = [];
    const member = (name: string) =>
      fromJetStream<{ id: number }>(nats, { stream: 'T3', durable: 'shared', filter: `t3.public.${subjectToken('odd.name')}`, ackWait: 2000, pullBatch: 2 })
        .pipe(
          processChanges(
            async (change: Change<{ id: number }>) => {
              if (change.new!.id === 13) throw new Error('unlucky');
              handled.push({ member: name, id: change.new!.id });
              await new Promise((resolve) => setTimeout(resolve, 5));
            },
            { concurrency: 4, attempts: 2, backoff: () => 1 },
          ),
        )
        .subscribe({ error: (error: unknown) => failures.push(error) });
    const a = member('a');
    const b = member('b');
    await eventually(() => handled.length === 39, 'every change but the unlucky one handled');
    const jsm = await jetstreamManager(nats);
    await eventually(async () => {
      const info = await jsm.consumers.info('T3', 'shared');
      return info.num_ack_pending === 0 && info.num_pending === 0;
    }, 'all acknowledged or terminated');
    expect(failures).toEqual([]);
    expect(new Set(handled.map((entry) => entry.id)).size).toBe(39);
    expect(new Set(handled.map((entry) => entry.member))).toEqual(new Set(['a', 'b']));
    a.unsubscribe();
    b.unsubscribe();
    const caughtUp = await firstValueFrom(jetStreamEvents$(nats, { stream: 'T3', durable: 'shared' }).pipe(filter((event) => event.kind === 'caught-up')));
    expect(caughtUp).toEqual({ kind: 'caught-up' });
    await relay.close();
    const js = jetstream(nats);
    expect((await (await js.consumers.get('T3', 'shared')).info()).num_redelivered).toBeGreaterThanOrEqual(0);
  });
});
