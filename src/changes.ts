import { Observable, type Subscriber } from 'rxjs';
import { assertColumns, type TableInfo } from './catalog.js';
import { isSchemaChange, rowKeyString, selectColumns, toItem, withRowSchema, type LogItem } from './change.js';
import { carryDelivery, Ledger, recordDelivery, recordUnacknowledged, type Stall } from './delivery.js';
import type { RetryDelivery, SessionQuery } from './deadLetters.js';
import type { Counters } from './counters.js';
import type { Lease, LeaseSettings } from './lease.js';
import type { Pool } from 'pg';
import { expiredError } from './consumers.js';
import { PgTideError, RowValidationError } from './errors.js';
import type { FeedMember, Hub } from './hub.js';
import { backoffDelay, sleep } from './backoff.js';
import { lostConnection, readPages, type PageSource } from './pages.js';
import { classifyDatabaseError } from './sql.js';
import { atOrAfter, inPartition, isDelivered, NOTHING_VISIBLE, type LogPage, type LogReader, type Position, type Queryable } from './log.js';
import type { Change, ChangesOptions, Logger, RowData, StartFrom, StreamEvent, StreamPhase } from './types.js';

/** What a stream needs from its Tide. */
export interface StreamContext {
  readonly reader: LogReader;
  readonly hub: Hub;
  readonly logger: Logger;
  readonly pageSize: number;
  /**
   * Describes the table, runs `check` on it (so bad options install nothing), then
   * watches it if needed.
   */
  prepare(table: string, columns: readonly string[] | undefined, check: (info: TableInfo) => void): Promise<TableInfo>;
  /** A `rowId`'s key values as the pool returns them (see `canonicalKey`). */
  canonicalKey(table: TableInfo, values: Record<string, unknown>): Promise<Record<string, unknown>>;
  /**
   * The consumer's cursor, registering it at `start` (run on `db`, under the prune lock)
   * on first use. `group`: the consumer is that group's partition (and must be one).
   */
  consumerPosition(
    name: string,
    tables: readonly TableInfo[],
    start: (db: Queryable) => Promise<Position>,
    group?: string,
  ): Promise<Position>;
  /** A new (not yet acquired) lease on consumer `name`. */
  lease(name: string): Lease;
  /** What sessions of their own (consumer group members) are opened with. */
  readonly sessions: LeaseSettings & { readonly pool: Pool };
  /** Keeps a change as a dead letter of `consumer` (see `processChanges`). */
  keepDeadLetter(consumer: string, relid: number, changeId: string, error: string, attempts: number): Promise<void>;
  /** Delivers the consumer's retried dead letters of `table` through `emit`, claimed on `session`. */
  retryDelivery(consumer: string, table: TableInfo, session: SessionQuery, emit: (change: Change) => boolean): RetryDelivery;
  /** Calls `handler` on each `<kind>:<name>` signal the listener hears; returns the unsubscribe function. */
  onSignal(kind: 'retry' | 'group', name: string, handler: () => void): () => void;
  /** What the Tide counts for its metrics. */
  readonly counters: Counters;
  /** A stream's phase changed (see `tide.status$`). */
  phaseChanged(): void;
  /** Reports a stalled consumer on `warnings$` and to the logger. */
  reportStall(consumer: string, stall: Stall): void;
  /** Milliseconds a consumer's processed position may wait before it is written. */
  readonly acknowledgeFlushDelay: number;
  /** See `ConnectOptions.stallTimeout`. */
  readonly stallTimeout: number;
  /** How long (ms) reads may keep failing before the stream fails with `CONNECTION_LOST`. */
  readonly reconnectTimeout: number;
  /** Whether the Tide is closed; streams complete instead of erroring then. */
  readonly closed: () => boolean;
  /**
   * Registers the stream with its Tide: `close()` completes it (saving its consumer
   * position unless the Tide is terminated). Returns the unregister function.
   */
  track(stream: TrackedStream): () => void;
}

/** Where a stream continues from a state pgtide read itself (see `state$`). */
export interface ResumePoint {
  /** Start after this position instead of `from`. */
  readonly after?: Position;
}

/** What the Tide can do to a live stream. */
export interface TrackedStream {
  /** The durable consumer it reads for, if any. */
  readonly consumer: string | undefined;
  /** Changes delivered and not yet processed (a durable consumer's in-flight window). */
  readonly inFlight?: number;
  /** What it is doing, and on which table(s) (see `tide.status$`). */
  readonly phase?: StreamPhase;
  readonly tableName?: string;
  /** Completes the subscriber; with `flush`, saves the consumer position first. */
  complete(flush: boolean): Promise<void>;
  /** Errors the subscriber (its consumer expired, say) without saving. */
  fail(error: unknown): void;
}

/**
 * The stream behind `changes$` and `events$`: replays the backlog from the start
 * position in pages, then joins the table's shared feed without gap or duplicate.
 */
export function changeEvents<Row = RowData>(
  context: StreamContext,
  table: string,
  options: ChangesOptions<Row>,
  resume: ResumePoint = {},
): Observable<StreamEvent<Row>> {
  return trackedStream(context, (subscriber) => new ChangeStream<Row>(context, table, options, subscriber, resume));
}

/** A stream the Tide tracks, as its own class runs it: one per subscription. */
export interface RunningStream extends TrackedStream {
  run(): Promise<void>;
  /** Stops reading; saves a consumer position when `flush`. */
  teardown(flush: boolean): Promise<void>;
}

/**
 * An Observable that runs a new stream per subscription, registered with the Tide (so
 * `close()` completes it); unsubscribing tears it down and saves its consumer position.
 */
export function trackedStream<T>(context: StreamContext, create: (subscriber: Subscriber<T>) => RunningStream): Observable<T> {
  return new Observable<T>((subscriber) => {
    const stream = create(subscriber);
    const untrack = context.track(stream);
    void stream.run();
    return () => {
      untrack();
      void stream.teardown(true);
    };
  });
}

/** Where a consumer's reader starts; `resumed`: it goes on with what it had delivered. */
interface OpenedConsumer {
  readonly position: Position;
  readonly resumed: boolean;
}

/**
 * What every stream of a Tide shares: ending once (complete, unsubscribe or failure),
 * and saving its consumer position on the way out unless it ended like a crash.
 */
export abstract class StreamBase<T> implements RunningStream {
  protected ended = false;
  private stopping: Promise<void> | undefined;
  /** Processed/unprocessed bookkeeping, for a durable consumer only. */
  protected ledger: Ledger | undefined;
  /** The consumer's lease while this stream is (or waits to be) its reader. */
  protected lease: Lease | undefined;
  /** The lease positions are saved through: only one that is held (see `openConsumer`). */
  private savingLease: Lease | undefined;

  /** The group whose partition this stream's consumer is: its dead letters are the group's. */
  protected groupName: string | undefined;
  private currentPhase: StreamPhase = 'starting';
  /** Called when the phase changes (see `tide.status$`). */
  protected onPhase: (() => void) | undefined;

  get phase(): StreamPhase {
    return this.currentPhase;
  }

  protected setPhase(phase: StreamPhase): void {
    if (phase === this.currentPhase) return;
    this.currentPhase = phase;
    this.onPhase?.();
  }

  constructor(
    protected readonly subscriber: Subscriber<T>,
    readonly consumer: string | undefined,
  ) {}

  abstract run(): Promise<void>;

  /** Stops reading: leaves feeds, wakes what sleeps. */
  protected abstract stopReading(): void;

  /** Tells the subscriber that another stream reads for this consumer (events$ only). */
  protected abstract standby(consumer: string): void;

  /**
   * Becomes the consumer's one reader: takes its lease (waiting as a standby while
   * another stream holds it), then reads its position and starts its ledger, retrying
   * while the database is unreachable (up to `reconnectTimeout`). Resolves with the
   * position, or undefined if the stream ended meanwhile.
   */
  protected async openConsumer(
    context: StreamContext,
    consumer: string,
    tables: readonly TableInfo[],
    start: (db: Queryable) => Promise<Position>,
    maxInFlight?: number,
    /** Keeps changes the handler gave up on as dead letters of the consumer (changes$ only). */
    deadLetterTable?: TableInfo,
  ): Promise<OpenedConsumer | undefined> {
    let failingSince: number | undefined;
    for (let attempt = 1; ; attempt += 1) {
      if (this.ended) return undefined;
      const lease = context.lease(consumer);
      this.lease = lease;
      lease.onLost((error) => {
        if (this.lease !== lease) return;
        this.savingLease = undefined;
        this.leaseLost(error);
      });
      try {
        if (!(await lease.acquire(() => this.standby(consumer))) || this.ended) return undefined;
        const position = await context.consumerPosition(consumer, tables, start, this.groupName);
        if (this.ended) return undefined;
        // Back after a lost lease, and nobody moved the position meanwhile: what this
        // stream delivered and holds in flight is still its own to finish.
        if (this.ledger?.owns(position)) {
          this.savingLease = lease;
          return { position: this.ledger.position, resumed: true };
        }
        void this.ledger?.close(false);
        this.savingLease = lease;
        this.ledger = new Ledger({
          start: position,
          save: (saved) => (this.savingLease ? this.savingLease.save(saved) : Promise.reject(new Error('the consumer lease is being taken again'))),
          flushDelay: context.acknowledgeFlushDelay,
          logger: context.logger,
          ...(maxInFlight === undefined ? {} : { maxInFlight }),
          stallTimeout: context.stallTimeout,
          onStall: (stall) => context.reportStall(consumer, stall),
          onFatal: (error) => this.fail(error),
          ...(deadLetterTable
            ? { deadLetter: (changeId: string, error: string, attempts: number) =>
                  context.keepDeadLetter(this.groupName ?? consumer, deadLetterTable.relid, changeId, error, attempts) }
            : {}),
        });
        return { position, resumed: false };
      } catch (error) {
        // A group partition's lease is not let go: that would unlock the partition (for
        // another stream to take) while this one retries, reading without it.
        if (!lease.retained) await lease.release();
        if (this.ended) return undefined;
        failingSince ??= Date.now();
        const giveUp = lostConnection(error, failingSince, context.reconnectTimeout, `consumer ${JSON.stringify(consumer)}`);
        if (giveUp) throw giveUp;
        context.logger.warn('pgtide: taking a consumer\'s lease failed; retrying', { consumer, error: String(error), attempt });
        await sleep(backoffDelay(attempt));
      }
    }
  }

  /**
   * The lease's connection was lost while this stream read (a server restart, say):
   * another process may be the reader now. The default ends the stream with the error.
   */
  protected leaseLost(error: PgTideError): void {
    this.fail(error);
  }

  /** Completes the subscriber (the Tide closed). */
  async complete(flush: boolean): Promise<void> {
    if (this.ended) return;
    const saved = this.teardown(flush);
    this.subscriber.complete();
    await saved;
  }

  /**
   * Stops reading; a consumer's processed position is saved when `flush`, then its
   * lease is released. Only the first call counts: after `terminate()` completes a
   * stream, the unsubscribe that follows must not save after all.
   */
  teardown(flush: boolean): Promise<void> {
    if (!this.stopping) {
      this.ended = true;
      this.stopReading();
      const lease = this.lease;
      this.stopping = (this.ledger?.close(flush) ?? Promise.resolve()).then(() => lease?.release());
    }
    return this.stopping;
  }

  /** Errors the subscriber, without saving (what was delivered is delivered again). */
  fail(error: unknown): void {
    if (this.ended) return;
    void this.teardown(false);
    this.subscriber.error(error);
  }
}

const defaultMaxInFlight = 1000;

/** One partition of a consumer group, read by the member that holds it (see group.ts). */
export interface PartitionRole {
  readonly group: string;
  readonly index: number;
  readonly count: number;
  /** The pages the member's partitions share (see `SharedPages`). */
  readonly pages: PageSource;
  /** Every partition's consumer name: pages are read for all, so they are the same pages. */
  readonly consumers: readonly string[];
}

export class ChangeStream<Row> extends StreamBase<StreamEvent<Row>> implements FeedMember {
  rowKey?: string;
  private info: TableInfo | undefined;
  private cursor: Position = { era: 1, base: NOTHING_VISIBLE };
  /** Joined a feed that is behind this stream: its rows up to here were delivered already. */
  private deliveredUpTo: Position | undefined;
  private feed: ReturnType<Hub['feed']> | undefined;
  /**
   * Rows the feed handed over while the gap before them was still being read, and the
   * positions it read past meanwhile (no item: see `passed`), in the feed's order.
   */
  private buffered: Array<[LogItem | undefined, Position]> | undefined;
  private caughtUp = false;
  /** Bumped when the consumer's lease is lost: reads of an earlier generation stop. */
  private generation = 0;
  private select: ((change: Change) => Change | undefined) | undefined;
  private readonly maxInFlight: number;
  private retries: RetryDelivery | undefined;
  private stopRetrySignals: (() => void) | undefined;

  constructor(
    private readonly context: StreamContext,
    private readonly table: string,
    private readonly options: ChangesOptions<Row>,
    subscriber: Subscriber<StreamEvent<Row>>,
    private readonly resume: ResumePoint,
    /** The group partition this stream reads for (see group.ts). */
    readonly partition?: PartitionRole,
  ) {
    super(subscriber, options.consumer);
    this.maxInFlight = options.maxInFlight ?? defaultMaxInFlight;
    this.groupName = partition?.group;
    this.onPhase = () => context.phaseChanged();
  }

  get tableName(): string {
    return this.info?.qualified ?? '';
  }

  /** Live on a feed whose reads are failing: reconnecting too. */
  override get phase(): StreamPhase {
    const phase = super.phase;
    return phase === 'live' && this.feed?.failing ? 'reconnecting' : phase;
  }

  /**
   * Stops delivering (this partition moves to another member), waits until what was
   * delivered is processed, saves the position and lets go of the lease, then completes.
   */
  async drain(): Promise<void> {
    if (this.ended) return;
    this.generation += 1;
    this.detach();
    this.buffered = undefined;
    await this.ledger?.roomFor(1);
    await this.teardown(true);
    this.subscriber.complete();
  }

  protected standby(consumer: string): void {
    this.setPhase('standby');
    if (!this.ended) this.subscriber.next({ kind: 'standby', consumer });
  }

  /** The consumer this stream reads for, once it is the consumer's reader. */
  get durableConsumer(): string | undefined {
    return this.ledger ? this.consumer : undefined;
  }

  /** Durable rowId streams follow the feed's position past other rows (see `passed`). */
  get followsPositions(): boolean {
    return this.ledger !== undefined && (this.rowKey !== undefined || this.partition !== undefined);
  }

  /** The feed read past this position: nothing of this stream's row was before it. */
  passed(position: Position): void {
    if (this.ended || !this.ledger) return;
    if (this.buffered) {
      // Taken in order after the gap: a page with none of this stream's rows moves it too.
      this.buffered.push([undefined, position]);
      return;
    }
    const own = this.ownPosition(position);
    this.cursor = own;
    this.ledger.pass(own);
  }

  /**
   * A position of the feed as this stream's. While the feed is behind what the stream
   * delivered before joining it (`deliveredUpTo`, the snapshot its replay read to), a
   * feed position covers less than the stream delivered: the feed's batch started
   * before that snapshot, so a row of it the stream had not seen may come, in id order,
   * before rows the replay delivered. Taken as is, the cursor and the processed
   * position would move back: leaving the feed (a full window) would read those rows
   * again, and a saved position (a clean stop, a partition's drain) would have the next
   * reader deliver them again. So: the replay's snapshot as the base, with the feed's
   * batch and last id on top (what the stream delivered is exactly what that covers);
   * the snapshot itself while the feed reads a batch the replay read whole. Forgets
   * `deliveredUpTo` once the feed is past it.
   */
  private ownPosition(position: Position): Position {
    const seen = this.deliveredUpTo;
    if (!seen) return position;
    if (position.era > seen.era || (position.era === seen.era && atOrAfter(position.base, seen.base))) {
      this.deliveredUpTo = undefined;
      return position;
    }
    // A row the replay did not deliver is visible in the feed's batch snapshot, not in
    // the replay's: that batch snapshot is the later one, so it sees all the replay saw.
    if (position.era === seen.era && position.upto && atOrAfter(position.upto, seen.base)) {
      return { era: seen.era, base: seen.base, upto: position.upto, afterId: position.afterId! };
    }
    return seen;
  }

  async run(): Promise<void> {
    try {
      let keyValues: Record<string, unknown> | undefined;
      const info = await this.context.prepare(this.table, this.options.columns, (described) => {
        if (this.options.rowId !== undefined) keyValues = rowIdValues(described, this.options.rowId);
        // Checks `field` against the table before anything is installed.
        selector(described, this.options, undefined);
      });
      if (keyValues) this.rowKey = rowKeyString(info.keyColumns, await this.context.canonicalKey(info, keyValues));
      this.select = selector(info, this.options, this.rowKey);
      this.info = info;
      const consumer = this.options.consumer;
      if (consumer === undefined) {
        this.cursor = await this.startPosition(info);
      } else {
        const opened = await this.becomeReader(consumer, info);
        if (opened === undefined) return;
        this.cursor = opened.position;
        if (!this.partition) this.startRetries(info);
      }
      await this.follow(info);
    } catch (error) {
      if (this.ended) return;
      if (this.context.closed()) void this.complete(false);
      else this.fail(classifyDatabaseError(error, `changes$('${this.table}')`) ?? error);
    }
  }

  protected stopReading(): void {
    this.detach();
    this.retries?.stop();
    this.stopRetrySignals?.();
  }

  receive(item: LogItem, position: Position): void {
    if (this.buffered) {
      this.buffered.push([item, position]);
      return;
    }
    const seen = this.deliveredUpTo;
    if (seen) {
      if (position.era > seen.era || (position.era === seen.era && atOrAfter(position.base, seen.base))) {
        this.deliveredUpTo = undefined;
      } else if (!isSchemaChange(item) && isDelivered(seen, position.era, BigInt(item.txid), BigInt(item.id))) {
        return;
      }
    }
    this.emit(item, this.ownPosition(position), true);
    // A slow consumer leaves the shared feed and reads at its own pace from its cursor.
    if (this.ledger && this.ledger.inFlight >= this.maxInFlight && this.feed) {
      this.detach();
      void this.follow(this.info!).catch((error: unknown) => this.fail(error));
    }
  }

  private detach(): void {
    this.feed?.remove(this);
    this.feed = undefined;
  }

  /** Replays from the cursor, then joins the shared feed. */
  private async follow(info: TableInfo): Promise<void> {
    const generation = this.generation;
    this.setPhase('replaying');
    await this.replay(info);
    if (this.ended || generation !== this.generation) return;
    await this.join(info);
  }

  /**
   * The lease's connection was lost (a server restart, say): stop delivering, take the
   * lease again (as a standby if another process took over meanwhile), then go on from
   * what was delivered if nobody moved the saved position, else from the saved position.
   */
  protected override leaseLost(error: PgTideError): void {
    if (this.ended) return;
    this.generation += 1;
    this.detach();
    this.buffered = undefined;
    this.deliveredUpTo = undefined;
    this.setPhase('reconnecting');
    this.context.logger.warn(`pgtide: ${error.message}; taking the lease again`, { consumer: this.consumer });
    const info = this.info!;
    void (async () => {
      const opened = await this.becomeReader(this.consumer!, info);
      if (opened === undefined) return;
      // Resumed: on from what was delivered. Otherwise another reader moved the
      // position: start over from it (what was in flight here is delivered again).
      if (!opened.resumed) this.cursor = opened.position;
      if (!this.partition) this.startRetries(info);
      await this.follow(info);
    })().catch((failure: unknown) => this.fail(failure));
  }

  private becomeReader(consumer: string, info: TableInfo): Promise<OpenedConsumer | undefined> {
    return this.openConsumer(this.context, consumer, [info], (db) => this.startPosition(info, db), this.maxInFlight, info);
  }

  /** As the consumer's reader: delivers its dead letters when a retry is asked for. */
  private startRetries(info: TableInfo): void {
    this.retries?.stop();
    const lease = this.lease!;
    this.retries = this.context.retryDelivery(this.consumer!, info, (text, values) => lease.query(text, values), (change) =>
      this.emitRetried(change),
    );
    this.stopRetrySignals ??= this.context.onSignal('retry', this.consumer!, () => this.retries?.poll());
    this.retries.poll();
  }

  /** Emits a retried dead letter through this stream's filter and schema. */
  private emitRetried(change: Change): boolean {
    if (this.ended) return false;
    return emitRetried(change, this.select!, this.options, this.info!, this.subscriber, (error) => this.fail(error));
  }

  /** Where the stream starts without a saved position (a consumer's first run). */
  private startPosition(info: TableInfo, db?: Queryable): Promise<Position> {
    return startPosition(this.context, info, this.options.from, this.resume, db);
  }

  /** Room for the next page: all of it, or what the consumer's in-flight window allows. */
  private async pageLimit(): Promise<number> {
    if (!this.ledger) return this.context.pageSize;
    await this.ledger.roomFor(this.maxInFlight);
    // A partition delivers a share of what it reads: pages of what the window holds
    // would be tiny. Its window may overshoot by that share of a page.
    if (this.partition) return this.context.pageSize;
    return Math.max(1, Math.min(this.context.pageSize, this.maxInFlight - this.ledger.inFlight));
  }

  /** Reads from the cursor until a page comes back short (or, with `upto`, to the end of that batch). */
  private async readFrom(info: TableInfo, from: Position): Promise<boolean> {
    // A read of an earlier generation (before the lease was lost) stops delivering.
    const generation = this.generation;
    const result = await readPages(from, {
      reader: this.partition?.pages ?? this.context.reader,
      relid: info.relid,
      table: info.qualified,
      logger: this.context.logger,
      reconnectTimeout: this.context.reconnectTimeout,
      checkPending: false,
      limit: () => this.pageLimit(),
      readAhead: !this.ledger,
      ...(this.ledger ? { consumers: () => this.partition?.consumers ?? [this.consumer!] } : {}),
      deliver: (page) => generation === this.generation && this.deliverPage(page),
      failing: (failing) => generation === this.generation && this.setPhase(failing ? 'reconnecting' : 'replaying'),
      stopped: () => this.ended || this.context.closed() || generation !== this.generation,
    });
    return result !== undefined && generation === this.generation;
  }

  private async replay(info: TableInfo): Promise<void> {
    await this.readFrom(info, this.cursor);
  }

  /**
   * Joins the shared feed. If the feed is ahead of us, the batch in between is read while
   * the feed's new rows wait in a buffer; if it is behind, the rows it hands over that we
   * delivered already are dropped.
   */
  private async join(info: TableInfo): Promise<void> {
    const generation = this.generation;
    // What an earlier join left (before the stream left the feed) is behind the cursor now.
    this.deliveredUpTo = undefined;
    let feed = this.context.hub.feed(info, this.cursor);
    await feed.betweenBatches();
    if (this.ended || generation !== this.generation) return;
    // The feed may have stopped meanwhile (its last member left): take the live one.
    feed = this.context.hub.feed(info, this.cursor);
    this.feed = feed;
    const joinAt = feed.position;
    const cursor = this.cursor;
    if (joinAt.era > cursor.era || (joinAt.era === cursor.era && !atOrAfter(cursor.base, joinAt.base))) {
      this.buffered = [];
      feed.add(this);
      const gap: Position =
        joinAt.era === cursor.era ? { era: cursor.era, base: cursor.base, upto: joinAt.base } : cursor;
      if (!(await this.readFrom(info, gap))) return;
      if (joinAt.era !== cursor.era) {
        // An era began between our replay and the feed's: replay on, then join again.
        this.buffered = undefined;
        this.detach();
        await this.follow(info);
        return;
      }
      const buffered = this.buffered;
      this.buffered = undefined;
      for (const [item, position] of buffered) {
        if (this.feed !== feed) break;
        if (item) this.receive(item, position);
        else this.passed(position);
      }
    } else {
      if (joinAt !== cursor) this.deliveredUpTo = cursor;
      feed.add(this);
    }
    if (!this.ended) this.setPhase('live');
    if (!this.ended && !this.caughtUp) {
      this.caughtUp = true;
      this.subscriber.next({ kind: 'caught-up' });
    }
  }

  /** Emits a page's rows and advances the cursor; false once the stream has ended. */
  private deliverPage(page: LogPage): boolean {
    const info = this.info!;
    if (page.expired.includes(this.consumer!)) {
      // Prune expired this consumer and may have deleted rows of this page's range.
      this.fail(expiredError(this.consumer!, new Date()));
      return false;
    }
    const partition = this.partition;
    for (let index = 0; index < page.rows.length; index += 1) {
      if (this.ended) return false;
      const row = page.rows[index]!;
      // Another partition the member holds reads it (the pass at the page's end, or the
      // next delivery, covers it).
      if (partition && !inPartition(partition, row)) continue;
      this.emit(toItem(row, info), page.positions[index]!, false);
    }
    if (this.ended) return false;
    if (page.next !== this.cursor) {
      this.cursor = page.next;
      this.ledger?.pass(page.next);
    }
    return true;
  }

  /** `shared`: the item came from the feed, which hands the same object to every stream. */
  private emit(item: LogItem, position: Position, shared: boolean): void {
    // Update state before emitting: a subscriber may unsubscribe from inside next().
    this.cursor = position;
    if (isSchemaChange(item)) {
      this.ledger?.pass(position);
      this.subscriber.next(item);
      return;
    }
    const change = item;
    const selected = this.select!(change);
    if (!selected) {
      this.ledger?.pass(position);
      return;
    }
    let typed: Change<Row>;
    try {
      typed = withRowSchema(selected, this.options.schema);
    } catch (error) {
      this.fail(new RowValidationError(change.id, this.info!.qualified, error));
      return;
    }
    if (this.ledger) {
      // A delivery needs the stream's own object to tie it to this stream's ledger.
      if (shared && typed === change) typed = { ...typed };
      recordDelivery(typed, this.ledger.deliver(position, typed.id));
    } else {
      recordUnacknowledged(typed);
    }
    this.context.counters.deliver(this.info!.qualified);
    this.subscriber.next({ kind: 'change', change: typed });
  }

  get inFlight(): number {
    return this.ledger?.inFlight ?? 0;
  }
}

/**
 * Emits a retried dead letter (see `RetryDelivery`) as the stream emits its changes:
 * through its filter and projection, validated by its schema, tied to the retry's
 * delivery. False if the stream skips it (or failed validating it).
 */
export function emitRetried<Row>(
  change: Change,
  select: (change: Change) => Change | undefined,
  options: ChangesOptions<Row>,
  info: TableInfo,
  subscriber: Subscriber<StreamEvent<Row>>,
  fail: (error: unknown) => void,
): boolean {
  const selected = select(change);
  if (!selected) return false;
  let typed: Change<Row>;
  try {
    typed = withRowSchema(selected, options.schema);
  } catch (error) {
    fail(new RowValidationError(change.id, info.qualified, error));
    return false;
  }
  carryDelivery(change, typed);
  subscriber.next({ kind: 'change', change: typed });
  return true;
}

/** Where a stream (or a consumer, on its first run) starts: `resume.after`, else `from`. */
export async function startPosition(
  context: StreamContext,
  info: TableInfo,
  from: StartFrom = 'now',
  resume: ResumePoint = {},
  db?: Queryable,
): Promise<Position> {
  if (resume.after) return resume.after;
  if (from === 'beginning') return { era: 1, base: NOTHING_VISIBLE };
  if (from === 'now') {
    const feed = context.hub.existing(info.relid);
    return feed && !feed.position.upto ? feed.position : await context.reader.now(db);
  }
  const found = await context.reader.positionAfterId(info.relid, from.after, db);
  if (!found) {
    throw new PgTideError('UNKNOWN_POSITION', `from.after: change ${from.after} of ${info.qualified} is not in the log`, {
      table: info.qualified,
      after: from.after,
    });
  }
  return found;
}

/** Values of the key columns named by a `rowId` option. */
export function rowIdValues(info: TableInfo, rowId: unknown): Record<string, unknown> {
  if (info.keyColumns.length === 1) {
    const column = info.keyColumns[0]!;
    if (typeof rowId === 'object' && rowId !== null && !Array.isArray(rowId) && column in rowId) {
      return rowId as Record<string, unknown>;
    }
    return { [column]: rowId };
  }
  if (typeof rowId !== 'object' || rowId === null) {
    throw new PgTideError(
      'INVALID_OPTIONS',
      `rowId: ${info.qualified} has a composite key; pass an object with ${info.keyColumns.join(', ')}`,
      { option: 'rowId', table: info.qualified },
    );
  }
  const missing = info.keyColumns.filter((column) => !(column in rowId));
  if (missing.length > 0) {
    throw new PgTideError('INVALID_OPTIONS', `rowId: missing key column(s) ${missing.join(', ')} of ${info.qualified}`, {
      option: 'rowId',
      table: info.qualified,
    });
  }
  return rowId as Record<string, unknown>;
}

/**
 * The per-stream filter and projection: rowId, columns, field. Returns the change to
 * emit, or undefined to skip it.
 */
export function selector<Row>(
  info: TableInfo,
  options: ChangesOptions<Row>,
  rowKey: string | undefined,
): (change: Change) => Change | undefined {
  // `columns` is checked against the table by the Tide's prepare(), for every stream kind.
  if (options.field !== undefined) assertColumns(info, [options.field], 'field');
  const watched = options.field !== undefined ? [options.field] : options.columns;
  const keep = watched ? new Set([...info.keyColumns, ...watched]) : undefined;
  return (change) => {
    // A TRUNCATE removes every row: each stream of the table hears of it.
    if (change.op === 'truncate') return change;
    if (rowKey !== undefined && rowKeyString(info.keyColumns, change.key) !== rowKey) return undefined;
    return watched && keep ? selectColumns(change, watched, keep) : change;
  };
}
