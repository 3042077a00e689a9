import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  StorageType,
  type JetStreamManager,
  type JsMsg,
  type StreamConfig,
} from '@nats-io/jetstream';
import { createInbox, headers, nanos, type Msg, type MsgHdrs, type NatsConnection, type Subscription as NatsSubscription } from '@nats-io/nats-core';
import { BehaviorSubject, Observable, filter, map, tap, type Subscription } from 'rxjs';
import { processChanges } from '../operators/processChanges.js';
import { decodeChange, encodeChange } from './codec.js';
import type { Tide } from './connect.js';
import { recordDelivery, type AcknowledgementTarget } from './delivery.js';
import { PgTideError } from './errors.js';
import type { Change, Logger, RowData, StartFrom, StreamEvent } from './types.js';

/** Headers the relay sets on every message, besides `Nats-Msg-Id`. */
export const relayHeaders = {
  /** `insert`, `update`, `delete` or `truncate`. */
  op: 'Pgtide-Op',
  /** The table, `schema.table`. */
  table: 'Pgtide-Table',
  /** The writing transaction's id (`xid8`). */
  txid: 'Pgtide-Txid',
  /** The change's log id. */
  changeId: 'Pgtide-Change-Id',
} as const;

/** Options of {@link relayToJetStream}. */
export interface RelayOptions {
  /** The tables whose changes are relayed: each is watched, for every column (a narrower watch is widened), so every change is relayed. */
  readonly tables: readonly string[];
  /**
   * Durable consumer name: the relay's position per table is the consumer
   * `<consumer>:<schema>.<table>`, so a restarted relay goes on where the last stopped,
   * and a second relay with the same name waits as a standby.
   */
  readonly consumer: string;
  /** A connection from `@nats-io/transport-node`'s `connect()`. The relay never closes it. */
  readonly nats: NatsConnection;
  /** The JetStream stream. Default `PGTIDE`. */
  readonly stream?: string;
  /** First subject token. Default `pgtide`: subjects are `pgtide.<schema>.<table>`. */
  readonly subjectPrefix?: string;
  /** The subject of each change, instead of `<subjectPrefix>.<schema>.<table>`. */
  readonly subject?: (change: Change) => string;
  /**
   * Create the stream when it does not exist (subjects `<subjectPrefix>.>`, file storage,
   * `duplicateWindow`). Default true; false: it must exist.
   */
  readonly createStream?: boolean;
  /** Duplicate window (ms) of a stream the relay creates. Default 2 minutes (at least what redelivery can need). */
  readonly duplicateWindow?: number;
  /** Publishes awaiting JetStream's ack at once (never two for one row). Default 256. */
  readonly window?: number;
  /** Milliseconds to wait for a publish ack before trying again. Default 5000. */
  readonly publishTimeout?: number;
  /** Delay (ms) before the `attempt`-th retry of a publish. Default 100 ms doubling to 5 s. */
  readonly backoff?: (attempt: number) => number;
  /** Share the tables with other relays of this name, by rows (a consumer group). Default false: one active relay. */
  readonly group?: boolean;
  /** Where a new relay consumer starts (see `ChangesOptions.from`). Default `'now'`. */
  readonly from?: StartFrom;
  /** Where warnings go. Default: the Tide's logger. */
  readonly logger?: Logger;
}

/** What a relay has done so far. */
export interface RelayStatus {
  /** `starting`, `running`, `stopped`, or `failed` (see `error`). */
  readonly phase: 'starting' | 'running' | 'stopped' | 'failed';
  /** Changes JetStream acknowledged (stored, or known as duplicates). */
  readonly relayed: number;
  /** Of those, the ones JetStream already held (same `Nats-Msg-Id` within its duplicate window). */
  readonly duplicates: number;
  /** Publishes awaiting JetStream's ack. */
  readonly inFlight: number;
  /** Publishes that failed and were tried again. */
  readonly retries: number;
  /** The last publish failure, for people. */
  readonly lastError?: string;
  /** Why the relay stopped, when `phase` is `failed`. */
  readonly error?: unknown;
}

/** A running relay (see {@link relayToJetStream}). */
export interface Relay {
  /** The relay's counts, now and whenever they change. */
  readonly status$: Observable<RelayStatus>;
  /** The counts now. */
  status(): RelayStatus;
  /** Resolves once the relay stopped (`close()`), rejects with the error that stopped it. */
  readonly done: Promise<void>;
  /** Stops relaying: unacknowledged changes are relayed again by the next relay (JetStream drops them as duplicates). */
  close(): Promise<void>;
}

const defaultStream = 'PGTIDE';
const defaultPrefix = 'pgtide';

/**
 * Relays every change of `tables` into a JetStream stream, at least once and
 * deduplicated: each change is published with a `Nats-Msg-Id` stable across relay
 * restarts and unique across databases (`<system identifier>.<database oid>.<table
 * oid>.<change id>`), and acknowledged to pgtide only after JetStream's publish ack, so
 * a relay that dies relays its unacknowledged changes again and JetStream drops the ones
 * it stored already. Publishes are pipelined (`window`) but never two for one row, so
 * each row's changes are stored in commit order. The body is {@link encodeChange}'s
 * text; headers say op, table, txid and change id ({@link relayHeaders}).
 *
 * Resolves once every table's consumer is registered (reading, or waiting as a standby
 * behind another relay of the same name). Creates the stream when it is missing, checks
 * that it takes the relay's subjects, and
 * warns when its duplicate window is shorter than a redelivery can need (a relay
 * taking over after `leaseTimeout`, a publish retried after a timeout).
 *
 * @throws PgTideError `INVALID_OPTIONS` for bad options, `NATS_STREAM_MISMATCH` when the
 *   stream does not take the relay's subjects, or is missing and `createStream` is false.
 *
 * @example
 * ```ts
 * import { connect as natsConnect } from '@nats-io/transport-node';
 * const nats = await natsConnect({ servers: 'localhost:4222' });
 * const relay = await relayToJetStream(tide, { tables: ['orders'], consumer: 'to-nats', nats });
 * ```
 */
export async function relayToJetStream(tide: Tide, options: RelayOptions): Promise<Relay> {
  const window = options.window ?? 256;
  const publishTimeout = options.publishTimeout ?? 5000;
  validateRelayOptions(options, window, publishTimeout);
  const logger = options.logger ?? tide.logger;
  const streamName = options.stream ?? defaultStream;
  const prefix = options.subjectPrefix ?? defaultPrefix;
  const subjectOf = options.subject ?? ((change: Change) => `${prefix}.${subjectToken(change.schema)}.${subjectToken(change.table)}`);
  const backoff = options.backoff ?? ((attempt: number) => Math.min(5000, 100 * 2 ** (attempt - 1)));
  const { leaseTimeout, acknowledgeFlushDelay } = tide.settings;
  // A change is published again when a relay takes over from one that died (after
  // leaseTimeout, plus the position save delay), or when a publish timed out: JetStream
  // must still remember the first publish then.
  const neededWindow = 2 * (leaseTimeout + acknowledgeFlushDelay + publishTimeout + backoff(3));

  for (const table of options.tables) await tide.watch(table);
  const tables = await describeRelayTables(tide, options.tables);
  const identity = await databaseIdentity(tide);
  const jsm = await jetstreamManager(options.nats);
  const sampleSubjects = tables.map((table) =>
    subjectOf({ id: '0', txid: '0', schema: table.schema, table: table.name, op: 'insert', key: {}, changed: [], committedAt: new Date(0) }),
  );
  await ensureStream(jsm, {
    name: streamName,
    subjects: [`${prefix}.>`],
    sampleSubjects,
    create: options.createStream ?? true,
    duplicateWindow: Math.max(options.duplicateWindow ?? 120_000, neededWindow),
    neededWindow,
    logger,
  });

  const counts = { relayed: 0, duplicates: 0, inFlight: 0, retries: 0 };
  let lastError: string | undefined;
  const status$ = new BehaviorSubject<RelayStatus>({ phase: 'starting', ...counts });
  const emit = (phase: RelayStatus['phase'], error?: unknown) =>
    status$.next({ phase, ...counts, ...(lastError !== undefined ? { lastError } : {}), ...(error !== undefined ? { error } : {}) });
  // Counts change twice per publish: status$ says so once per burst.
  let emitQueued = false;
  const emitSoon = () => {
    if (emitQueued) return;
    emitQueued = true;
    queueMicrotask(() => {
      emitQueued = false;
      if (!status$.closed) emit('running');
    });
  };
  const byTable = new Map(tables.map((table) => [`${table.schema}.${table.name}`, table]));
  // The default subject of a table is the same for each of its changes.
  const subjects = new Map<RelayTable, string>();
  const subjectFor = (change: Change, table: RelayTable): string => {
    if (options.subject) return options.subject(change);
    let subject = subjects.get(table);
    if (subject === undefined) subjects.set(table, (subject = subjectOf(change)));
    return subject;
  };

  const publisher = new AckedPublisher(options.nats, publishTimeout);
  const publish = async (change: Change, attempt: { n: number }) => {
    const table = byTable.get(`${change.schema}.${change.table}`)!;
    const hdrs = headers();
    hdrs.set(msgIdHeader, `${identity}.${table.relid}.${change.id}`);
    hdrs.set(relayHeaders.op, change.op);
    hdrs.set(relayHeaders.table, `${change.schema}.${change.table}`);
    hdrs.set(relayHeaders.txid, change.txid);
    hdrs.set(relayHeaders.changeId, change.id);
    if (attempt.n > 0) counts.retries += 1;
    attempt.n += 1;
    counts.inFlight += 1;
    emitSoon();
    try {
      const duplicate = await publisher.publish(subjectFor(change, table), encodeChange(change), hdrs);
      counts.relayed += 1;
      if (duplicate) counts.duplicates += 1;
    } catch (error) {
      // Publishes still pending when the relay stops are relayed again by the next relay.
      if (ended) throw error;
      lastError = error instanceof Error ? error.message : String(error);
      logger.warn('pgtide: publishing to JetStream failed; trying again', { change: change.id, error: lastError });
      throw error;
    } finally {
      counts.inFlight -= 1;
      emitSoon();
    }
  };

  const subscriptions: Subscription[] = [];
  let settle!: { resolve: () => void; reject: (error: unknown) => void };
  const done = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  let ended = false;
  const end = (error?: unknown) => {
    if (ended) return;
    ended = true;
    for (const subscription of subscriptions) subscription.unsubscribe();
    publisher.close();
    emit(error === undefined ? 'stopped' : 'failed', error);
    status$.complete();
    if (error === undefined) settle.resolve();
    else settle.reject(error);
  };
  const started: Array<Promise<void>> = [];
  for (const table of tables) {
    const attempts = new WeakMap<Change, { n: number }>();
    let ready!: () => void;
    started.push(new Promise<void>((resolve) => (ready = resolve)));
    const subscription = tide
      .events$(table.qualified, {
        consumer: `${options.consumer}:${table.schema}.${table.name}`,
        maxInFlight: 2 * window,
        ...(options.from !== undefined ? { from: options.from } : {}),
        ...(options.group ? { group: true } : {}),
      })
      .pipe(
        // Its first event (a change, caught-up, standby, a group share) comes once the consumer
        // is registered: the position is kept from here on.
        tap(() => ready()),
        filter((event): event is Extract<StreamEvent, { kind: 'change' }> => event.kind === 'change'),
        map((event) => event.change),
        processChanges(
          (change: Change) => {
            let attempt = attempts.get(change);
            if (!attempt) attempts.set(change, (attempt = { n: 0 }));
            return publish(change, attempt);
          },
          { concurrency: window, attempts: Infinity, backoff },
        ),
      )
      .subscribe({ error: (error: unknown) => end(error) });
    subscriptions.push(subscription);
  }
  done.catch(() => undefined);
  await Promise.race([Promise.all(started), done]);
  emit('running');
  return {
    status$: status$.asObservable(),
    status: () => status$.getValue(),
    done,
    close: async () => {
      end();
      await done;
    },
  };
}

/** Options of {@link fromJetStream}. */
export interface FromJetStreamOptions {
  /** The stream the relay writes. Default `PGTIDE`. */
  readonly stream?: string;
  /** The durable consumer's name: processes using the same name share its messages. */
  readonly durable: string;
  /** Subject filter of the durable consumer when it is created (`pgtide.public.orders`, `pgtide.>`). */
  readonly filter?: string;
  /** Create the durable consumer when it does not exist (explicit acks, from the stream's start). Default true. */
  readonly create?: boolean;
  /** Milliseconds JetStream waits for an ack before it delivers a message again (when created). Default 30 s. */
  readonly ackWait?: number;
  /** Unacknowledged messages JetStream lets this consumer hold (when created). Default 1000. */
  readonly maxAckPending?: number;
  /** Messages asked for at once (JetStream's pull batch); a smaller batch shares a durable's messages more evenly between processes. Default 256. */
  readonly pullBatch?: number;
  /** Delay (ms) of the nak a message gets when the stream ends before it was acknowledged. Default 1000. */
  readonly nakDelay?: number;
  /** Where warnings go (a message that is not an encoded change). Default `console`. */
  readonly logger?: Logger;
}

/**
 * The changes a relay stored in JetStream, from a durable JetStream consumer, as
 * `changes$` delivers them: `acknowledge()`, `processChanges()` and the other operators
 * work unchanged and acknowledge the JetStream message (`processChanges` dead letters
 * end it with `term`). Messages delivered and not acknowledged when the stream ends get
 * a `nak` after `nakDelay`. Several processes with the same `durable` share the
 * messages. Changes of one row may be worked on by two processes at once: per-row order
 * across processes is what a pgtide consumer group gives, not JetStream's.
 *
 * @example
 * ```ts
 * fromJetStream(nats, { durable: 'billing', filter: 'pgtide.public.orders' })
 *   .pipe(ofOperation('insert'), processChanges(charge, { concurrency: 8 }))
 *   .subscribe();
 * ```
 */
export function fromJetStream<Row = RowData>(nats: NatsConnection, options: FromJetStreamOptions): Observable<Change<Row>> {
  return jetStreamEvents$<Row>(nats, options).pipe(
    filter((event): event is Extract<StreamEvent<Row>, { kind: 'change' }> => event.kind === 'change'),
    map((event) => event.change),
  );
}

/**
 * {@link fromJetStream} as events: each change, and `{ kind: 'caught-up' }` once, when the
 * consumer had no more messages pending.
 */
export function jetStreamEvents$<Row = RowData>(nats: NatsConnection, options: FromJetStreamOptions): Observable<StreamEvent<Row>> {
  if (typeof options.durable !== 'string' || options.durable.length === 0) {
    throw new PgTideError('INVALID_OPTIONS', 'fromJetStream: durable must be a non-empty string', { option: 'durable' });
  }
  const streamName = options.stream ?? defaultStream;
  const nakDelay = options.nakDelay ?? 1000;
  const logger = options.logger ?? console;
  return new Observable<StreamEvent<Row>>((subscriber) => {
    const acknowledgements = new MessageAcknowledgements(serverAtLeast(nats, 2, 10));
    let stopped = false;
    let messages: { stop(): void; close(): Promise<void | Error> } | undefined;
    void (async () => {
      const jsm = await jetstreamManager(nats);
      await ensureConsumer(jsm, streamName, options);
      const consumer = await jetstream(nats).consumers.get(streamName, options.durable);
      let caughtUp = false;
      const caughtUpNow = () => {
        if (caughtUp) return;
        caughtUp = true;
        subscriber.next({ kind: 'caught-up' });
      };
      if ((await consumer.info()).num_pending === 0) caughtUpNow();
      if (stopped) return;
      const iterator = await consumer.consume({ max_messages: Math.min(options.maxAckPending ?? 1000, options.pullBatch ?? 256) });
      messages = iterator;
      for await (const message of iterator) {
        if (stopped) {
          message.nak(nakDelay);
          continue;
        }
        let change: Change<Row>;
        try {
          change = decodeChange<Row>(message.string());
        } catch (error) {
          logger.warn('pgtide: a JetStream message is not an encoded change; terminated', { subject: message.subject, error: String(error) });
          message.term('not an encoded change');
          continue;
        }
        recordDelivery(change, { target: acknowledgements, number: acknowledgements.track(message), id: change.id });
        subscriber.next({ kind: 'change', change });
        if (message.info.pending === 0) caughtUpNow();
      }
    })().catch((error: unknown) => {
      if (!stopped) subscriber.error(error);
    });
    return () => {
      stopped = true;
      messages?.stop();
      acknowledgements.nakAll(nakDelay);
    };
  });
}

/** Where the changes of a JetStream stream are acknowledged: each delivery is a message. */
class MessageAcknowledgements implements AcknowledgementTarget {
  private readonly messages = new Map<number, JsMsg>();
  private next = 0;
  readonly keepsDeadLetters = true;

  /** `termReasons`: whether the server takes a reason with a term (2.10 on; 2.9 reads one as a nak). */
  constructor(private readonly termReasons: boolean) {}

  track(message: JsMsg): number {
    this.next += 1;
    this.messages.set(this.next, message);
    return this.next;
  }

  complete(number: number): void {
    const message = this.messages.get(number);
    if (!message) return;
    this.messages.delete(number);
    message.ack();
  }

  ambiguous(): void {
    // Messages are acknowledged through the change objects themselves, never by id.
  }

  deadLetter(number: number, error: string, attempts: number): Promise<void> {
    const message = this.messages.get(number);
    if (message) {
      this.messages.delete(number);
      if (this.termReasons) message.term(`pgtide: gave up after ${attempts} attempts: ${error}`.slice(0, 1000));
      else message.term();
    }
    return Promise.resolve();
  }

  nakAll(delay: number): void {
    for (const message of this.messages.values()) message.nak(delay);
    this.messages.clear();
  }
}

const msgIdHeader = 'Nats-Msg-Id';

/**
 * JetStream publishes whose acks all arrive on one wildcard inbox, as the Go client's
 * PublishAsync does: `js.publish()` makes a request per message (its own timer and
 * three stack-traced errors), which cost the relay more CPU than everything else it does
 * per change. Acks are matched to publishes by the reply token; since every publish
 * waits the same `timeout`, the oldest pending one is always the next to expire, and one
 * timer serves them all.
 */
class AckedPublisher {
  private readonly inbox: string;
  private readonly pending = new Map<string, PendingAck>();
  private readonly subscription: NatsSubscription;
  private sequence = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly nats: NatsConnection,
    private readonly timeout: number,
  ) {
    // The connection's own inbox prefix: accounts that may only subscribe below it keep working.
    const options = (nats as { readonly options?: { readonly inboxPrefix?: string } }).options;
    this.inbox = createInbox(options?.inboxPrefix);
    this.subscription = nats.subscribe(`${this.inbox}.*`, {
      callback: (error, message) => (error ? this.failAll(error) : this.settle(message)),
    });
  }

  /** Publishes one message; resolves with whether JetStream already held its `Nats-Msg-Id`. */
  publish(subject: string, body: string, hdrs: MsgHdrs): Promise<boolean> {
    const token = (this.sequence += 1).toString(36);
    return new Promise<boolean>((resolve, reject) => {
      try {
        this.nats.publish(subject, body, { reply: `${this.inbox}.${token}`, headers: hdrs });
      } catch (error) {
        reject(error);
        return;
      }
      this.pending.set(token, { subject, resolve, reject, deadline: Date.now() + this.timeout });
      this.timer ??= setTimeout(() => this.expire(), this.timeout);
    });
  }

  /** Fails what is still pending (its changes are relayed again by the next relay) and stops listening. */
  close(): void {
    this.failAll(new Error('the relay stopped before JetStream acknowledged the publish'));
    this.subscription.unsubscribe();
  }

  private settle(message: Msg): void {
    const token = message.subject.slice(this.inbox.length + 1);
    const waiting = this.pending.get(token);
    // An ack after its publish timed out: the publish was tried again, under another token.
    if (!waiting) return;
    this.pending.delete(token);
    if (message.headers?.hasError && message.data.length === 0) {
      waiting.reject(
        new Error(
          message.headers.code === 503
            ? `no JetStream stream took ${waiting.subject} (no responders)`
            : `JetStream answered ${message.headers.code} ${message.headers.description}`,
        ),
      );
      return;
    }
    let ack: { readonly stream?: string; readonly duplicate?: boolean; readonly error?: { readonly code?: number; readonly description?: string } };
    try {
      ack = JSON.parse(message.string()) as typeof ack;
    } catch {
      waiting.reject(new Error(`JetStream's publish ack is not JSON: ${message.string().slice(0, 200)}`));
      return;
    }
    if (ack.error) waiting.reject(new Error(`JetStream refused the publish: ${ack.error.description ?? 'error'} (${ack.error.code ?? '?'})`));
    else if (!ack.stream) waiting.reject(new Error('JetStream sent an invalid publish ack'));
    else waiting.resolve(ack.duplicate === true);
  }

  private expire(): void {
    this.timer = undefined;
    const now = Date.now();
    for (const [token, waiting] of this.pending) {
      if (waiting.deadline > now) {
        this.timer = setTimeout(() => this.expire(), waiting.deadline - now);
        return;
      }
      this.pending.delete(token);
      waiting.reject(new Error(`JetStream did not acknowledge the publish to ${waiting.subject} within ${this.timeout} ms`));
    }
  }

  private failAll(error: unknown): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const publish of waiting) publish.reject(error);
  }
}

interface PendingAck {
  readonly subject: string;
  readonly resolve: (duplicate: boolean) => void;
  readonly reject: (error: unknown) => void;
  readonly deadline: number;
}

interface RelayTable {
  readonly qualified: string;
  readonly schema: string;
  readonly name: string;
  readonly relid: number;
}

async function describeRelayTables(tide: Tide, names: readonly string[]): Promise<RelayTable[]> {
  const { rows } = await tide.pool.query<RelayTable & { given: string }>(
    `SELECT t.given, c.oid::int8::float8 AS relid, n.nspname AS schema, c.relname AS name, format('%I.%I', n.nspname, c.relname) AS qualified
       FROM unnest($1::text[]) t(given) JOIN pg_class c ON c.oid = to_regclass(t.given) JOIN pg_namespace n ON n.oid = c.relnamespace`,
    [names],
  );
  return names.map((given) => rows.find((row) => row.given === given)!);
}

/** This database, unique among databases (the cluster's system identifier and the database's oid). */
async function databaseIdentity(tide: Tide): Promise<string> {
  const { rows } = await tide.pool.query<{ system: string; database: string }>(
    `SELECT (SELECT e.system_identifier::text FROM ${tide.schemaIdent}.eras e ORDER BY e.era DESC LIMIT 1) AS system,
            (SELECT d.oid::text FROM pg_database d WHERE d.datname = current_database()) AS database`,
  );
  return `${rows[0]!.system}.${rows[0]!.database}`;
}

/**
 * A schema or table name as one subject token: letters, digits, `_` and `-` stay, every
 * other character (`.`, `*`, `>`, spaces, ...) is percent-encoded, so no name can add
 * tokens or wildcards.
 */
export function subjectToken(name: string): string {
  return Array.from(new TextEncoder().encode(name), (byte) => {
    const char = String.fromCharCode(byte);
    return /[A-Za-z0-9_-]/.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }).join('');
}

/** Whether a subject filter (`a.*.c`, `a.>`) matches a subject. */
export function subjectMatches(filterSubject: string, subject: string): boolean {
  const wanted = filterSubject.split('.');
  const tokens = subject.split('.');
  for (let index = 0; index < wanted.length; index += 1) {
    if (wanted[index] === '>') return tokens.length > index;
    if (index >= tokens.length) return false;
    if (wanted[index] !== '*' && wanted[index] !== tokens[index]) return false;
  }
  return wanted.length === tokens.length;
}

function validateRelayOptions(options: RelayOptions, window: number, publishTimeout: number): void {
  if (!Array.isArray(options.tables) || options.tables.length === 0) {
    throw new PgTideError('INVALID_OPTIONS', 'relayToJetStream: tables must name at least one table', { option: 'tables' });
  }
  if (typeof options.consumer !== 'string' || options.consumer.length === 0) {
    throw new PgTideError('INVALID_OPTIONS', 'relayToJetStream: consumer must be a non-empty string', { option: 'consumer' });
  }
  if (!options.nats) throw new PgTideError('INVALID_OPTIONS', 'relayToJetStream: nats (a NATS connection) is required', { option: 'nats' });
  for (const [name, value] of [['window', window], ['publishTimeout', publishTimeout]] as const) {
    if (!Number.isInteger(value) || value < 1) {
      throw new PgTideError('INVALID_OPTIONS', `relayToJetStream: ${name} must be an integer of at least 1`, { option: name, value });
    }
  }
}

/** Whether the connected server's version is at least major.minor. */
function serverAtLeast(nats: NatsConnection, major: number, minor: number): boolean {
  const [serverMajor = 0, serverMinor = 0] = (nats.info?.version ?? '0.0').split('.').map(Number);
  return serverMajor > major || (serverMajor === major && serverMinor >= minor);
}

function isApiError(error: unknown, code: number): boolean {
  return error instanceof JetStreamApiError && error.code === code;
}

async function ensureStream(
  jsm: JetStreamManager,
  wanted: {
    readonly name: string;
    readonly subjects: readonly string[];
    readonly sampleSubjects: readonly string[];
    readonly create: boolean;
    readonly duplicateWindow: number;
    readonly neededWindow: number;
    readonly logger: Logger;
  },
): Promise<void> {
  let config: StreamConfig;
  try {
    config = (await jsm.streams.info(wanted.name)).config;
  } catch (error) {
    if (!isApiError(error, JetStreamApiCodes.StreamNotFound)) throw error;
    if (!wanted.create) {
      throw new PgTideError('NATS_STREAM_MISMATCH', `JetStream stream ${wanted.name} does not exist (createStream is false)`, {
        stream: wanted.name,
      });
    }
    await jsm.streams.add({
      name: wanted.name,
      subjects: [...wanted.subjects],
      storage: StorageType.File,
      duplicate_window: nanos(wanted.duplicateWindow),
    });
    return;
  }
  const missing = wanted.sampleSubjects.filter((subject) => !config.subjects?.some((bound) => subjectMatches(bound, subject)));
  if (missing.length > 0) {
    throw new PgTideError(
      'NATS_STREAM_MISMATCH',
      `JetStream stream ${wanted.name} does not take subject(s) ${missing.join(', ')} (its subjects: ${(config.subjects ?? []).join(', ')})`,
      { stream: wanted.name, subjects: missing },
    );
  }
  const windowMs = (config.duplicate_window ?? 0) / 1e6;
  if (windowMs < wanted.neededWindow) {
    wanted.logger.warn(
      `pgtide: JetStream stream ${wanted.name} keeps message ids for ${Math.round(windowMs)} ms (duplicate_window), ` +
        `but a change may be published again up to ${wanted.neededWindow} ms after its first publish ` +
        '(a relay taking over after leaseTimeout, a publish retried after a timeout): such a change would be stored twice. ' +
        'Raise the stream\'s duplicate_window.',
      { stream: wanted.name, duplicateWindowMs: windowMs, neededMs: wanted.neededWindow },
    );
  }
}

async function ensureConsumer(jsm: JetStreamManager, stream: string, options: FromJetStreamOptions): Promise<void> {
  try {
    await jsm.consumers.info(stream, options.durable);
    return;
  } catch (error) {
    if (!isApiError(error, JetStreamApiCodes.ConsumerNotFound)) throw error;
    if (options.create === false) {
      throw new PgTideError('NATS_STREAM_MISMATCH', `JetStream consumer ${options.durable} of stream ${stream} does not exist (create is false)`, {
        stream,
        durable: options.durable,
      });
    }
  }
  await jsm.consumers.add(stream, {
    durable_name: options.durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(options.ackWait ?? 30_000),
    max_ack_pending: options.maxAckPending ?? 1000,
    ...(options.filter !== undefined ? { filter_subject: options.filter } : {}),
  });
}

