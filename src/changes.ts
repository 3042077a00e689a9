import { Observable, type Subscriber } from 'rxjs';
import { assertColumns, type TableInfo } from './catalog.js';
import { isSchemaChange, rowKeyString, selectColumns, toItem, withRowSchema, type LogItem } from './change.js';
import { recordDelivery, Ledger } from './delivery.js';
import { PgTideError, RowValidationError } from './errors.js';
import type { FeedMember, Hub } from './hub.js';
import { readPages } from './pages.js';
import { classifyDatabaseError } from './sql.js';
import { atOrAfter, isDelivered, NOTHING_VISIBLE, type LogPage, type LogReader, type Position } from './log.js';
import type { Change, ChangesOptions, Logger, RowData, StreamEvent } from './types.js';

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
  /** The consumer's cursor, registering it at `start` on first use. */
  consumerPosition(name: string, tables: readonly TableInfo[], start: () => Promise<Position>): Promise<Position>;
  /** Writes a consumer's processed position. */
  saveConsumerPosition(name: string, position: Position): Promise<void>;
  /** Milliseconds a consumer's processed position may wait before it is written. */
  readonly acknowledgeFlushDelay: number;
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
  /** Completes the subscriber; with `flush`, saves the consumer position first. */
  complete(flush: boolean): Promise<void>;
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

/**
 * What every stream of a Tide shares: ending once (complete, unsubscribe or failure),
 * and saving its consumer position on the way out unless it ended like a crash.
 */
export abstract class StreamBase<T> implements RunningStream {
  protected ended = false;
  private stopping: Promise<void> | undefined;
  /** Processed/unprocessed bookkeeping, for a durable consumer only. */
  protected ledger: Ledger | undefined;

  constructor(protected readonly subscriber: Subscriber<T>) {}

  abstract run(): Promise<void>;

  /** Stops reading: leaves feeds, wakes what sleeps. */
  protected abstract stopReading(): void;

  /** Completes the subscriber (the Tide closed). */
  async complete(flush: boolean): Promise<void> {
    if (this.ended) return;
    const saved = this.teardown(flush);
    this.subscriber.complete();
    await saved;
  }

  /**
   * Stops reading; a consumer's processed position is saved when `flush`. Only the
   * first call counts: after `terminate()` completes a stream, the unsubscribe that
   * follows must not save after all.
   */
  teardown(flush: boolean): Promise<void> {
    if (!this.stopping) {
      this.ended = true;
      this.stopReading();
      this.stopping = this.ledger?.close(flush) ?? Promise.resolve();
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

class ChangeStream<Row> extends StreamBase<StreamEvent<Row>> implements FeedMember {
  rowKey?: string;
  private info: TableInfo | undefined;
  private cursor: Position = { era: 1, base: NOTHING_VISIBLE };
  /** Joined a feed that is behind this stream: its rows up to here were delivered already. */
  private deliveredUpTo: Position | undefined;
  private feed: ReturnType<Hub['feed']> | undefined;
  /** Rows the feed handed over while the gap before them was still being read. */
  private buffered: Array<[LogItem, Position]> | undefined;
  private caughtUp = false;
  private select: ((change: Change) => Change | undefined) | undefined;
  private readonly maxInFlight: number;

  constructor(
    private readonly context: StreamContext,
    private readonly table: string,
    private readonly options: ChangesOptions<Row>,
    subscriber: Subscriber<StreamEvent<Row>>,
    private readonly resume: ResumePoint,
  ) {
    super(subscriber);
    this.maxInFlight = options.maxInFlight ?? defaultMaxInFlight;
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
      this.cursor = await this.startPosition(info);
      const consumer = this.options.consumer;
      if (consumer !== undefined && !this.ended) {
        this.ledger = new Ledger(
          this.cursor,
          (position) => this.context.saveConsumerPosition(consumer, position),
          this.context.acknowledgeFlushDelay,
          this.context.logger,
        );
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
    this.emit(item, position);
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
    await this.replay(info);
    if (this.ended) return;
    await this.join(info);
  }

  private async startPosition(info: TableInfo): Promise<Position> {
    if (this.resume.after) return this.resume.after;
    const from = this.options.from ?? 'now';
    const start = async (): Promise<Position> => {
      if (from === 'beginning') return { era: 1, base: NOTHING_VISIBLE };
      if (from === 'now') {
        const feed = this.context.hub.existing(info.relid);
        return feed && !feed.position.upto ? feed.position : await this.context.reader.now();
      }
      const found = await this.context.reader.positionAfterId(info.relid, from.after);
      if (!found) {
        throw new PgTideError('UNKNOWN_POSITION', `from.after: change ${from.after} of ${info.qualified} is not in the log`, {
          table: info.qualified,
          after: from.after,
        });
      }
      return found;
    };
    return this.options.consumer === undefined ? start() : this.context.consumerPosition(this.options.consumer, [info], start);
  }

  /** Room for the next page: all of it, or what the consumer's in-flight window allows. */
  private async pageLimit(): Promise<number> {
    if (!this.ledger) return this.context.pageSize;
    await this.ledger.roomFor(this.maxInFlight);
    return Math.max(1, Math.min(this.context.pageSize, this.maxInFlight - this.ledger.inFlight));
  }

  /** Reads from the cursor until a page comes back short (or, with `upto`, to the end of that batch). */
  private async readFrom(info: TableInfo, from: Position): Promise<boolean> {
    const result = await readPages(from, {
      reader: this.context.reader,
      relid: info.relid,
      table: info.qualified,
      logger: this.context.logger,
      reconnectTimeout: this.context.reconnectTimeout,
      checkPending: false,
      limit: () => this.pageLimit(),
      readAhead: !this.ledger,
      deliver: (page) => this.deliverPage(page),
      stopped: () => this.ended || this.context.closed(),
    });
    return result !== undefined;
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
    let feed = this.context.hub.feed(info, this.cursor);
    await feed.betweenBatches();
    if (this.ended) return;
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
        this.receive(item, position);
      }
    } else {
      if (joinAt !== cursor) this.deliveredUpTo = cursor;
      feed.add(this);
    }
    if (!this.ended && !this.caughtUp) {
      this.caughtUp = true;
      this.subscriber.next({ kind: 'caught-up' });
    }
  }

  /** Emits a page's rows and advances the cursor; false once the stream has ended. */
  private deliverPage(page: LogPage): boolean {
    const info = this.info!;
    for (let index = 0; index < page.rows.length; index += 1) {
      if (this.ended) return false;
      this.emit(toItem(page.rows[index]!, info), page.positions[index]!);
    }
    if (this.ended) return false;
    if (page.next !== this.cursor) {
      this.cursor = page.next;
      this.ledger?.pass(page.next);
    }
    return true;
  }


  private emit(item: LogItem, position: Position): void {
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
    if (this.ledger) recordDelivery(typed, this.ledger, this.ledger.deliver(position));
    this.subscriber.next({ kind: 'change', change: typed });
  }
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
function selector<Row>(
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
