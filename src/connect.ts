import pg from 'pg';
import { BehaviorSubject, defer, distinctUntilChanged, filter, map, pipe, Subject, type Observable, type OperatorFunction } from 'rxjs';
import { listBlockers } from './blockers.js';
import { unwatchTable, watchTable } from './capture.js';
import { canonicalKey, describeTable } from './catalog.js';
import { changeEvents, type StreamContext, type TrackedStream } from './changes.js';
import { groupEvents } from './group.js';
import {
  consumerPosition,
  dropConsumer,
  listConsumers,
  prune,
  expiredError,
  type ConsumerInfo,
  type PruneResult,
} from './consumers.js';
import type { Stall } from './delivery.js';
import { dropDeadLetters, keepDeadLetter, listDeadLetters, requestRetry, RetryDelivery, type DeadLetter } from './deadLetters.js';
import { PgTideError } from './errors.js';
import { Hub } from './hub.js';
import { ConsumerLease, type LeaseSettings } from './lease.js';
import { Listener } from './listener.js';
import { Counters } from './counters.js';
import { LogReader } from './log.js';
import { migrate } from './migrate.js';
import {
  parseChangesOptions,
  parseConsumerName,
  parseIds,
  parseConnectOptions,
  parseStateOptions,
  parseTableArgument,
  parseTableList,
  parseTransactionsOptions,
  parseWaitFor,
  parseWatchOptions,
  type ConnectOptions,
} from './options.js';
import { classifyDatabaseError, resolveSchemaNames, type SchemaNames } from './sql.js';
import { liveRows, liveState } from './state.js';
import { Tables } from './tables.js';
import { listWatched, readLogStats, type LogStats, type WatchedTable } from './status.js';
import { transactionEvents } from './transactions.js';
import { waitForTransaction } from './waitFor.js';
import type {
  Blocker,
  Change,
  ChangesOptions,
  LiveEvent,
  Logger,
  RowData,
  StateOptions,
  StreamEvent,
  TideWarning,
  Transaction,
  TransactionsOptions,
  WaitForOptions,
  TideSettings,
  TideStatus,
  WatchOptions,
} from './types.js';

const consoleLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message, meta) => console.warn(message, meta ?? ''),
  error: (message, meta) => console.error(message, meta ?? ''),
};

/**
 * Connects to PostgreSQL, installs or upgrades the SDK's schema, and opens the one
 * LISTEN connection this Tide shares between all its streams.
 *
 * @example
 * ```ts
 * const tide = await connect({ connectionString: process.env.DATABASE_URL });
 * tide.changes$('mail_users').subscribe((change) => console.log(change.op, change.key));
 * ```
 * @throws PgTideError `INVALID_OPTIONS` naming the bad field; `SCHEMA_TOO_NEW`.
 */
export async function connect(options: ConnectOptions): Promise<Tide> {
  const parsed = parseConnectOptions(options);
  const ownsPool = parsed.pool === undefined;
  const pool = parsed.pool ?? new pg.Pool({ connectionString: parsed.connectionString, application_name: 'pgtide' });
  if (ownsPool) {
    // An idle client's error is emitted on the pool; unheard, it would crash the process.
    const logger = parsed.logger ?? consoleLogger;
    pool.on('error', (error) => logger.warn('pgtide: idle database connection failed', { error: error.message }));
  }
  try {
    const schema = await resolveSchemaNames(pool, parsed.schema ?? 'pgtide');
    await migrate(pool, schema);
    // A database restored into another cluster starts a new era of positions here.
    await pool.query(`SELECT ${schema.ident}.current_era()`);
    const tide = new Tide(pool, ownsPool, schema, parsed);
    await tide.listen();
    return tide;
  } catch (error) {
    if (ownsPool) await pool.end().catch(() => undefined);
    throw classifyDatabaseError(error, 'connect') ?? error;
  }
}

/**
 * A connection to pgtide: change streams of any number of tables, sharing one LISTEN
 * connection and one reader per table. Create one per process with {@link connect}.
 */
export class Tide {
  /** The pool pgtide reads through (yours, if you passed one). */
  readonly pool: pg.Pool;
  /** The SDK's schema name. */
  readonly schema: string;
  private readonly names: SchemaNames;
  /** Where pgtide's warnings go (`ConnectOptions.logger`). */
  readonly logger: Logger;
  /** The timings this Tide runs with (`ConnectOptions`, defaults filled in). */
  readonly settings: TideSettings;
  private readonly reader: LogReader;
  private readonly hub: Hub;
  private readonly listener: Listener;
  private readonly streams = new Set<TrackedStream>();
  private readonly tables: Tables;
  private readonly pageSize: number;
  private readonly acknowledgeFlushDelay: number;
  private readonly reconnectTimeout: number;
  private readonly retentionSeconds: number;
  private readonly maxLag: number;
  private readonly stallTimeout: number;
  private readonly leaseTimeout: number;
  private readonly pollInterval: number;
  private readonly pruneTimer: NodeJS.Timeout | undefined;
  private readonly warnings = new Subject<TideWarning>();
  /** @internal What pgtide/metrics reports. */
  readonly counters = new Counters();
  private listenedOnce = false;
  private listening = false;
  private readonly status = new BehaviorSubject<TideStatus>({ listen: 'connecting', streams: [] });
  private statusQueued = false;
  /** Whether something `status$` reports changed since `status` was last computed. */
  private statusStale = false;

  /**
   * The LISTEN connection's state and every stream's phase (`starting`, `replaying`,
   * `live`, `standby`, `reconnecting`), now and whenever one of them changes. For health
   * checks and dashboards; the figures to alert on are in `pgtide/metrics`.
   * Computed only while observed (see `statusChanged`): a subscriber gets it fresh.
   */
  readonly status$: Observable<TideStatus> = defer(() => {
    this.refreshStatus();
    return this.status;
  }).pipe(distinctUntilChanged(sameStatus));
  /** Handlers of listener signals, by `<kind>:<name>`. */
  private readonly signalHandlers = new Map<string, Set<() => void>>();
  private closed = false;

  /**
   * Conditions an operator should know about: a consumer expired for lagging more than
   * `maxLag` changes, a consumer whose position is stuck behind a change nobody
   * acknowledged (`consumer-stalled`). Each is also logged as a warning.
   */
  readonly warnings$: Observable<TideWarning> = this.warnings.asObservable();

  /** @internal Use {@link connect}. */
  constructor(
    pool: pg.Pool,
    private readonly ownsPool: boolean,
    names: SchemaNames,
    options: ConnectOptions,
  ) {
    this.pool = pool;
    this.names = names;
    this.schema = names.name;
    this.logger = options.logger ?? consoleLogger;
    this.pageSize = options.pageSize ?? 1000;
    this.acknowledgeFlushDelay = options.acknowledgeFlushDelay ?? 100;
    this.reconnectTimeout = options.reconnectTimeout ?? 60_000;
    this.retentionSeconds = (options.retention ?? 24 * 3600_000) / 1000;
    this.maxLag = options.maxLag ?? 10_000_000;
    this.stallTimeout = options.stallTimeout ?? 30_000;
    this.leaseTimeout = options.leaseTimeout ?? 10_000;
    this.pollInterval = options.pollInterval ?? 1000;
    this.settings = {
      leaseTimeout: this.leaseTimeout,
      acknowledgeFlushDelay: this.acknowledgeFlushDelay,
      reconnectTimeout: this.reconnectTimeout,
      pollInterval: this.pollInterval,
    };
    const pruneInterval = options.pruneInterval ?? 60_000;
    if (pruneInterval > 0) {
      this.pruneTimer = setInterval(() => {
        this.prune().catch((error: unknown) => this.logger.warn('pgtide: background prune failed', { error: String(error) }));
      }, pruneInterval);
      this.pruneTimer.unref();
    }
    this.reader = new LogReader(pool, names, this.counters);
    this.tables = new Tables(pool, names);
    this.hub = new Hub({
      reader: this.reader,
      logger: this.logger,
      pageSize: this.pageSize,
      pollInterval: this.pollInterval,
      reconnectTimeout: this.reconnectTimeout,
      onFailing: () => this.statusChanged(),
    });
    this.listener = new Listener(pool.options, names.name, {
      nudge: (relid) => {
        this.counters.wakeUps += 1;
        this.hub.nudge(relid);
      },
      nudgeAll: () => this.hub.nudgeAll(),
      expired: (consumer) => this.stopExpired(consumer, new Date()),
      signal: (kind, name) => {
        for (const handler of [...(this.signalHandlers.get(`${kind}:${name}`) ?? [])]) handler();
      },
      status: (listening) => {
        this.counters.listen(listening, this.listenedOnce);
        this.listenedOnce ||= listening;
        this.listening = listening;
        this.statusChanged();
        this.logger.info(`pgtide: LISTEN ${listening ? 'up' : 'down'}`);
      },
    }, this.logger);
  }

  /** @internal */
  async listen(): Promise<void> {
    await this.listener.start();
  }

  /**
   * Changes to a table as an Observable: first the backlog from the start position
   * (`from` or the consumer's cursor), then live changes, with no gap and no duplicate.
   * Per row, changes arrive in commit order. Capture is installed on first use.
   *
   * @example
   * ```ts
   * tide.changes$('mail_users', { columns: ['quota_bytes'] })
   *   .subscribe((c) => console.log(c.op, c.key, c.old?.quota_bytes, '->', c.new?.quota_bytes));
   * ```
   * @param table - `'name'`, `'schema.name'`, or quoted SQL identifiers.
   * @throws PgTideError `INVALID_OPTIONS` at once; `UNKNOWN_TABLE`, `UNKNOWN_COLUMN`,
   *   `NO_PRIMARY_KEY` and `UNKNOWN_POSITION` as the stream's error, before anything is installed.
   */
  changes$<Row = RowData>(table: string, options: ChangesOptions<Row> = {}): Observable<Change<Row>> {
    return this.events$(table, options).pipe(onlyChanges());
  }

  /**
   * Like {@link Tide.changes$}, plus a `caught-up` event once the stream has delivered
   * its backlog and follows the live log: from that moment every change that commits
   * is delivered.
   *
   * @example
   * ```ts
   * tide.events$('mail_users').subscribe((e) => {
   *   if (e.kind === 'caught-up') startAcceptingRequests();
   *   else apply(e.change);
   * });
   * ```
   */
  events$<Row = RowData>(table: string, options: ChangesOptions<Row> = {}): Observable<StreamEvent<Row>> {
    this.assertOpen();
    const name = parseTableArgument(table);
    const parsed = parseChangesOptions<Row>(options);
    if (parsed.group) return groupEvents(this.streamContext(), name, parsed);
    return changeEvents(this.streamContext(), name, parsed);
  }

  /**
   * Whole transactions: every committed transaction that wrote any of `tables`, once,
   * with its changes to those tables in statement order (changes to other tables are
   * left out). Transactions come in an order that agrees with every row's commit order.
   * With `consumer`, acknowledging a transaction acknowledges all its changes; the
   * consumer's position moves between batches of transactions, so a crash redelivers at
   * most the batch it was in.
   *
   * @example
   * ```ts
   * tide.transactions$(['orders', 'order_lines'], { consumer: 'invoicing' })
   *   .pipe(concatMap(async (tx) => { await invoice(tx.changes); return tx; }), acknowledge())
   *   .subscribe();
   * ```
   * @throws PgTideError `INVALID_TABLE_NAME`, `INVALID_OPTIONS` at once; `UNKNOWN_TABLE`
   *   and the like as the stream's error.
   */
  transactions$<Row = RowData>(tables: readonly string[], options: TransactionsOptions<Row> = {}): Observable<Transaction<Row>> {
    this.assertOpen();
    const names = parseTableList(tables);
    const parsed = parseTransactionsOptions<Row>(options);
    return transactionEvents({ ...this.streamContext(), pollInterval: this.pollInterval }, names, parsed);
  }

  /**
   * Read your writes: resolves once every change of transaction `txid` is readable by
   * this Tide's streams (at once if it already is). Give it what the writer got from
   * `SELECT pg_current_xact_id()::text` in its transaction.
   *
   * @example
   * ```ts
   * const { rows } = await client.query(`INSERT ... ; SELECT pg_current_xact_id()::text AS txid`);
   * await tide.waitFor(rows[0].txid, { timeout: 2000 }); // now every stream has seen it
   * ```
   * @throws PgTideError `WAIT_TIMEOUT` after `timeout` ms; `TRANSACTION_ROLLED_BACK` if it
   *   rolled back; `INVALID_OPTIONS` for something that is not a transaction id.
   */
  async waitFor(txid: string, options: WaitForOptions = {}): Promise<void> {
    this.assertOpen();
    const parsed = parseWaitFor(txid, options);
    await waitForTransaction(this.pool, this.hub, parsed.txid, parsed.options.timeout ?? 10_000);
  }

  /**
   * A table's rows (or one row's, with `rowId`) and what happens to them: first
   * `{ kind: 'snapshot', rows }` (a `Map` from `stateKey` to row), then
   * `{ kind: 'change', change }` for each change after it. Snapshot and changes fit
   * exactly (see {@link Tide.state$}). For views that apply changes themselves, such as
   * `pgtide/http`'s `liveHandler`.
   *
   * @example
   * ```ts
   * tide.live$('mail_users').subscribe((event) =>
   *   event.kind === 'snapshot' ? render(event.rows) : apply(event.change));
   * ```
   */
  live$<Row = RowData>(table: string, options: StateOptions<Row> = {}): Observable<LiveEvent<Row>> {
    this.assertOpen();
    const name = parseTableArgument(table);
    const parsed = parseStateOptions<Row>(options);
    return liveRows(this.streamContext(), this.pool, this.names, name, parsed);
  }

  /**
   * The current rows of a table (or of one row, with `rowId`) as a `Map` from primary
   * key (see `stateKey`) to row: first a snapshot, then a new map after each change.
   * The snapshot and the log position it corresponds to are read in one REPEATABLE READ
   * transaction, so snapshot and changes fit exactly: none applied twice, none missed,
   * however long the log keeps changes. The building block for live UI sync.
   *
   * @example
   * ```ts
   * tide.state$('mail_users').subscribe((rows) => render([...rows.values()]));
   * ```
   */
  state$<Row = RowData>(table: string, options: StateOptions<Row> = {}): Observable<ReadonlyMap<string, Row>> {
    this.assertOpen();
    const name = parseTableArgument(table);
    const parsed = parseStateOptions<Row>(options);
    return liveState(this.streamContext(), this.pool, this.names, name, parsed);
  }

  /**
   * Installs capture for a table without subscribing (`changes$` does this lazily).
   * Watching again with other columns widens the captured set.
   *
   * @returns the table as now watched (see {@link Tide.watched}).
   * @example
   * ```ts
   * await tide.watch('mail_users', { columns: ['quota_bytes'] });
   * ```
   * @throws PgTideError `UNKNOWN_TABLE`, `UNKNOWN_COLUMN`, `NO_PRIMARY_KEY`, `INVALID_OPTIONS`.
   */
  async watch(table: string, options: WatchOptions = {}): Promise<WatchedTable> {
    this.assertOpen();
    const parsed = parseWatchOptions(options);
    const info = await watchTable(this.pool, this.names, parseTableArgument(table), parsed.columns);
    this.tables.forget();
    return (await listWatched(this.pool, this.names, info.relid))[0]!;
  }

  /** Every watched table: key, captured columns, changes in the log, and since when. */
  async watched(): Promise<WatchedTable[]> {
    this.assertOpen();
    return listWatched(this.pool, this.names);
  }

  /** The log as a whole: schema version, changes, size on disk, oldest change. */
  async logStats(): Promise<LogStats> {
    this.assertOpen();
    return readLogStats(this.pool, this.names);
  }

  /**
   * Removes capture from a table. Its changes already in the log stay until pruned.
   *
   * @returns whether the table was watched.
   */
  async unwatch(table: string): Promise<boolean> {
    this.assertOpen();
    const removed = await unwatchTable(this.pool, this.names, parseTableArgument(table));
    this.tables.forget();
    return removed;
  }

  /**
   * Open writing transactions and prepared transactions, oldest first. A change is
   * delivered once its own transaction commits, so none of these delays anyone else's
   * changes: each holds back only its own, and pruning (the log keeps what a consumer
   * may still need, and vacuum cannot clean behind the oldest).
   *
   * @example
   * ```ts
   * for (const b of await tide.blockers()) console.log(b.kind, b.txid, b.ageSeconds, b.holdsBack);
   * ```
   */
  async blockers(): Promise<Blocker[]> {
    this.assertOpen();
    return listBlockers(this.pool);
  }

  /**
   * Deletes the log rows no one needs any more: per table, the changes every durable
   * consumer of it has acknowledged, and for tables without a live consumer, changes
   * older than `retention`. Consumers more than `maxLag` changes behind are expired
   * first (see {@link Tide.warnings$}). Also runs every `pruneInterval`.
   *
   * @example
   * ```ts
   * const { deleted } = await tide.prune();
   * ```
   */
  async prune(): Promise<PruneResult> {
    this.assertOpen();
    const result = await prune(this.pool, this.names, { retentionSeconds: this.retentionSeconds, maxLag: this.maxLag });
    for (const consumer of result.expired) {
      const warning: TideWarning = {
        kind: 'consumer-expired',
        consumer,
        message: `consumer ${JSON.stringify(consumer)} is more than ${this.maxLag} changes behind (maxLag) and was expired: it no longer holds back pruning`,
      };
      this.logger.warn(`pgtide: ${warning.message}`, { consumer });
      this.warnings.next(warning);
      this.stopExpired(consumer, new Date());
    }
    return result;
  }

  /** Ends this process's streams of a consumer that prune expired (here or elsewhere). */
  private stopExpired(consumer: string, expiredAt: Date): void {
    for (const stream of [...this.streams]) if (stream.consumer === consumer) stream.fail(expiredError(consumer, expiredAt));
  }

  private reportStall(consumer: string, stall: Stall): void {
    const seconds = Math.round((Date.now() - stall.since.getTime()) / 1000);
    const cause = stall.windowFull
      ? `its ${stall.behind + 1} delivered changes fill maxInFlight and none of the oldest was acknowledged`
      : `${stall.processedBehind} of the ${stall.behind} changes delivered after it were processed`;
    const warning: TideWarning = {
      kind: 'consumer-stalled',
      consumer,
      waitingFor: stall.waitingFor,
      since: stall.since,
      behind: stall.behind,
      processedBehind: stall.processedBehind,
      message:
        `consumer ${JSON.stringify(consumer)} has waited ${seconds}s for change ${stall.waitingFor} to be acknowledged, and ${cause}. ` +
        'Usually an operator dropped that change without marking it processed (a plain filter, take, or a failed handler that was ' +
        'caught): drop changes with filterRows/ofOperation, or call markProcessed(change) for each change you drop.',
    };
    this.logger.warn(`pgtide: ${warning.message}`, { consumer, waitingFor: stall.waitingFor, behind: stall.behind });
    this.warnings.next(warning);
  }

  /** Every durable consumer with its position and lag (changes and age). */
  async consumers(): Promise<ConsumerInfo[]> {
    this.assertOpen();
    return listConsumers(this.pool, this.names);
  }

  /**
   * The changes `consumer`'s handlers gave up on (see `processChanges`), oldest first,
   * each with the last error and the attempts made. For a consumer group, its name.
   *
   * @example
   * ```ts
   * for (const letter of await tide.deadLetters('billing')) console.log(letter.change.id, letter.error);
   * ```
   */
  async deadLetters(consumer: string): Promise<DeadLetter[]> {
    this.assertOpen();
    return listDeadLetters(this.pool, this.names, this.reader, parseConsumerName(consumer), (qualified) =>
      describeTable(this.pool, qualified),
    );
  }

  /**
   * Delivers dead letters of `consumer` again (all, or those with these ids) through its
   * running stream (or, for a group, one of its members), outside their rows' order; a
   * stream that starts later picks them up too. Each is removed once processed, or kept
   * again with its new error. Resolves with how many were asked for.
   */
  async retryDeadLetters(consumer: string, ids?: readonly string[]): Promise<number> {
    this.assertOpen();
    return requestRetry(this.pool, this.names, parseConsumerName(consumer), ids && parseIds(ids));
  }

  /** Removes dead letters of `consumer` (all, or those with these ids); resolves with how many. */
  async dropDeadLetters(consumer: string, ids?: readonly string[]): Promise<number> {
    this.assertOpen();
    return dropDeadLetters(this.pool, this.names, parseConsumerName(consumer), ids && parseIds(ids));
  }

  /**
   * Removes a durable consumer: it no longer holds back pruning, and its name can be
   * used afresh. Returns whether it existed.
   */
  async dropConsumer(name: string): Promise<boolean> {
    this.assertOpen();
    return dropConsumer(this.pool, this.names, name);
  }

  /**
   * Ends the LISTEN connection and every stream (each subscriber gets `complete`),
   * saves durable consumers' processed positions, and ends the pool if pgtide created it.
   */
  async close(): Promise<void> {
    await this.shutDown(true);
  }

  /**
   * Like {@link Tide.close}, but does not save consumers' latest processed positions:
   * what a crash does. Changes processed since the last save are delivered again on
   * resume (at-least-once). Useful to test a pipeline's crash behaviour.
   */
  async terminate(): Promise<void> {
    await this.shutDown(false);
  }

  private async shutDown(flush: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pruneTimer);
    const completions = [...this.streams].map((stream) => stream.complete(flush));
    this.hub.stop();
    await Promise.all([this.listener.close(), ...completions]);
    this.warnings.complete();
    this.status.complete();
    if (this.ownsPool) await this.pool.end();
  }

  private assertOpen(): void {
    if (this.closed) throw new PgTideError('CLOSED', 'this Tide is closed');
  }

  private leaseSettings(): LeaseSettings {
    return { config: this.pool.options, schema: this.names, leaseTimeout: this.leaseTimeout, logger: this.logger };
  }

  /**
   * Recomputes `status$`, once per burst of changes, while someone observes it. The
   * status lists every stream, and each stream changes phase a few times as it starts:
   * recomputed for nobody, 10k rowId streams subscribing at once built some 10^8 stream
   * entries (seconds of CPU and GC, hundreds of MB). Unobserved, it is only marked stale
   * and the next subscriber computes it (see `status$`).
   */
  private statusChanged(): void {
    this.statusStale = true;
    if (this.statusQueued || this.status.closed || !this.status.observed) return;
    this.statusQueued = true;
    queueMicrotask(() => {
      this.statusQueued = false;
      this.refreshStatus();
    });
  }

  private refreshStatus(): void {
    if (!this.statusStale || this.status.closed) return;
    this.statusStale = false;
    this.status.next({
      listen: this.listening ? 'up' : this.listenedOnce ? 'down' : 'connecting',
      streams: [...this.streams].map((stream) => ({
        table: stream.tableName ?? '',
        ...(stream.consumer !== undefined ? { consumer: stream.consumer } : {}),
        phase: stream.phase ?? 'starting',
      })),
    });
  }

  /** @internal The SDK's schema as an identifier for SQL text, quoted by the server (`format('%I')`). */
  get schemaIdent(): string {
    return this.names.ident;
  }

  /** @internal Each durable consumer stream of this Tide with its unprocessed deliveries (pgtide/metrics). */
  inFlight(): Array<{ readonly consumer: string; readonly inFlight: number }> {
    return [...this.streams].flatMap((stream) =>
      stream.consumer === undefined ? [] : [{ consumer: stream.consumer, inFlight: stream.inFlight ?? 0 }],
    );
  }

  /** What every stream of this Tide is given (see `streamContext`). */
  private sharedContext: StreamContext | undefined;

  /**
   * One object for every stream: it holds nothing of a stream's own, and a fresh one
   * per subscription (some twenty closures) was kilobytes per stream, 10k rowId streams'
   * worth tens of MB.
   */
  private streamContext(): StreamContext {
    return (this.sharedContext ??= this.newStreamContext());
  }

  private newStreamContext(): StreamContext {
    return {
      reader: this.reader,
      counters: this.counters,
      hub: this.hub,
      logger: this.logger,
      pageSize: this.pageSize,
      acknowledgeFlushDelay: this.acknowledgeFlushDelay,
      reconnectTimeout: this.reconnectTimeout,
      closed: () => this.closed,
      prepare: (table, columns, check) => this.tables.prepare(table, columns, check),
      canonicalKey: (table, values) => canonicalKey(this.pool, table, values),
      consumerPosition: (name, tables, start, group) => consumerPosition(this.pool, this.names, name, tables, start, group),
      lease: (name) => new ConsumerLease(this.leaseSettings(), name),
      sessions: { ...this.leaseSettings(), pool: this.pool },
      reportStall: (consumer, stall) => this.reportStall(consumer, stall),
      keepDeadLetter: (consumer, relid, changeId, error, attempts) =>
        keepDeadLetter(this.pool, this.names, consumer, relid, changeId, error, attempts),
      retryDelivery: (consumer, table, session, emit) =>
        new RetryDelivery({ pool: this.pool, schema: this.names, reader: this.reader, logger: this.logger, consumer, table, session, emit }),
      onSignal: (kind, name, handler) => {
        const key = `${kind}:${name}`;
        let handlers = this.signalHandlers.get(key);
        if (!handlers) this.signalHandlers.set(key, (handlers = new Set()));
        handlers.add(handler);
        return () => {
          handlers.delete(handler);
          if (handlers.size === 0) this.signalHandlers.delete(key);
        };
      },
      stallTimeout: this.stallTimeout,
      track: (stream) => {
        this.streams.add(stream);
        this.statusChanged();
        return () => {
          this.streams.delete(stream);
          this.statusChanged();
        };
      },
      phaseChanged: () => this.statusChanged(),
    };
  }

}

/** Drops the `caught-up` marker: the changes of an event stream. */
function onlyChanges<Row>(): OperatorFunction<StreamEvent<Row>, Change<Row>> {
  return pipe(
    filter((event): event is Extract<StreamEvent<Row>, { kind: 'change' }> => event.kind === 'change'),
    map((event) => event.change),
  );
}

function sameStatus(a: TideStatus, b: TideStatus): boolean {
  return (
    a.listen === b.listen &&
    a.streams.length === b.streams.length &&
    a.streams.every((stream, index) => {
      const other = b.streams[index]!;
      return stream.table === other.table && stream.consumer === other.consumer && stream.phase === other.phase;
    })
  );
}
