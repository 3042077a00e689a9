import type { TableInfo } from './catalog.js';
import { isSchemaChange, rowKeyString, toItem, type LogItem } from './change.js';
import { expiredError } from './consumers.js';
import { lostConnection, readPages } from './pages.js';
import { inPartition, type LogReader, type LogRow, type Position } from './log.js';
import type { Logger } from './types.js';

/** A stream attached to a table's shared feed. */
export interface FeedMember {
  /** When set, the member only wants rows with this key (see `rowKeyString`). */
  readonly rowKey?: string;
  /** When set, the member only wants the rows of this consumer group partition (see `inPartition`). */
  readonly partition?: { readonly count: number; readonly index: number } | undefined;
  receive(item: LogItem, position: Position): void;
  /**
   * Whether a `rowKey` member wants to hear how far the feed read (`passed`): a durable
   * consumer of one row must move its position past the other rows too.
   */
  readonly followsPositions?: boolean;
  /** The feed has handed over everything up to `position` (see `followsPositions`). */
  passed?(position: Position): void;
  /**
   * The durable consumer the member reads for: the feed reads its pages for these
   * consumers, and fails a member whose consumer a page says was expired before it
   * hands the member anything of that page.
   */
  readonly durableConsumer?: string | undefined;
  /** The feed gave up (the database stayed unreachable): the member errors. */
  fail(error: unknown): void;
}

export interface HubSettings {
  readonly reader: LogReader;
  readonly logger: Logger;
  /** Rows per log query. */
  readonly pageSize: number;
  /** How often idle feeds look for changes without a wake-up (one query for all of them). */
  readonly pollInterval: number;
  /** How long (ms) reads may keep failing before the members are failed with `CONNECTION_LOST`. */
  readonly reconnectTimeout: number;
  /** A feed's reads started or stopped failing (see `TableFeed.failing`). */
  readonly onFailing?: () => void;
}

/**
 * Re-read delays while writers that skipped NOTIFY are committing: from 1 ms, doubling
 * up to `pollInterval` while they stay (a prepared transaction can stay for long).
 */
export class PendingBackoff {
  private delay = 1;

  constructor(private readonly pollInterval: number) {}

  /** After a read: how long to wait before reading again, or undefined when none are committing. */
  next(pending: boolean): number | undefined {
    if (!pending) {
      this.delay = 1;
      return undefined;
    }
    const delay = this.delay;
    this.delay = Math.min(this.pollInterval, delay * 2);
    return delay;
  }
}

/**
 * One reader per watched table, shared by every stream of this process that has caught
 * up with the live log. It reads when woken (NOTIFY, the poll, a writer still
 * committing) and fans rows out, by row key where streams follow single rows.
 */
export class TableFeed {
  private readonly everyRow = new Set<FeedMember>();
  private readonly partitioned = new Set<FeedMember>();
  private readonly byKey = new Map<string, Set<FeedMember>>();
  private readonly positionFollowers = new Set<FeedMember>();
  private readonly consumerMembers = new Map<string, Set<FeedMember>>();
  private reading = false;
  /** Whether its reads are failing and being retried. */
  failing = false;
  private again = false;
  private stopped = false;
  private pendingTimer: NodeJS.Timeout | undefined;
  private readonly backoff: PendingBackoff;
  private readonly readWaiters: Array<() => void> = [];
  private readonly readListeners = new Set<(feed: TableFeed) => void>();

  constructor(
    readonly table: TableInfo,
    private cursor: Position,
    private readonly settings: HubSettings,
    private readonly onIdle: (feed: TableFeed) => void,
  ) {
    this.backoff = new PendingBackoff(settings.pollInterval);
  }

  /** Everything up to this position has been handed to the members. */
  get position(): Position {
    return this.cursor;
  }

  /** Whether a read is under way or due (so the poll need not ask about this table). */
  get busy(): boolean {
    return this.reading || this.pendingTimer !== undefined;
  }

  get size(): number {
    return this.everyRow.size + this.byKey.size + this.partitioned.size;
  }

  add(member: FeedMember): void {
    if (member.durableConsumer !== undefined) addTo(this.consumerMembers, member.durableConsumer, member);
    if (member.partition) this.partitioned.add(member);
    else if (member.rowKey === undefined) this.everyRow.add(member);
    else addTo(this.byKey, member.rowKey, member);
    if (member.followsPositions) this.positionFollowers.add(member);
    // The first member may have replayed up to a snapshot older than a wake-up that
    // went to nobody: look at once rather than at the next poll.
    if (this.size === 1) this.nudge();
  }

  remove(member: FeedMember): void {
    if (member.durableConsumer !== undefined) removeFrom(this.consumerMembers, member.durableConsumer, member);
    if (member.partition) this.partitioned.delete(member);
    else if (member.rowKey === undefined) this.everyRow.delete(member);
    else removeFrom(this.byKey, member.rowKey, member);
    this.positionFollowers.delete(member);
    if (this.size === 0) this.stop();
  }

  /** Resolves once the feed is between batches (a joining stream needs a whole batch behind it). */
  async betweenBatches(): Promise<void> {
    while (this.cursor.upto && !this.stopped) await new Promise<void>((resolve) => this.readWaiters.push(resolve));
  }

  /** Calls `listener` after every read (see `Tide.waitFor`). Returns the remover. */
  onRead(listener: (feed: TableFeed) => void): () => void {
    this.readListeners.add(listener);
    return () => this.readListeners.delete(listener);
  }

  /** Something may have committed: read now. Bursts of nudges coalesce into one read. */
  nudge(): void {
    if (this.stopped) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    clearTimeout(this.pendingTimer);
    this.pendingTimer = undefined;
    void this.read();
  }

  /** Fails every member (reads gave up) and stops. */
  fail(error: unknown): void {
    for (const member of [...this.everyRow, ...this.partitioned, ...[...this.byKey.values()].flatMap((set) => [...set])]) {
      member.fail(error);
    }
    this.stop();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.pendingTimer);
    for (const wake of this.readWaiters.splice(0)) wake();
    this.onIdle(this);
  }

  private async read(): Promise<void> {
    this.reading = true;
    let pending = false;
    try {
      do {
        this.again = false;
        let unhashed = false;
        const result = await readPages(this.cursor, {
          reader: this.settings.reader,
          relid: this.table.relid,
          table: this.table.qualified,
          logger: this.settings.logger,
          reconnectTimeout: this.settings.reconnectTimeout,
          checkPending: true,
          limit: () => this.settings.pageSize,
          readAhead: true,
          consumers: () => [...this.consumerMembers.keys()],
          keys: () => (this.partitioned.size > 0 ? 'hash' : undefined),
          failing: (failing) => {
            this.failing = failing;
            this.settings.onFailing?.();
          },
          stopped: () => this.stopped,
          deliver: (page) => {
            // Read before a group partition joined: without key hashes, read it again.
            if (this.partitioned.size > 0 && !page.keyHashes) {
              unhashed = true;
              return false;
            }
            for (const consumer of page.expired) {
              const error = expiredError(consumer, new Date());
              for (const member of [...(this.consumerMembers.get(consumer) ?? [])]) member.fail(error);
            }
            for (let index = 0; index < page.rows.length; index += 1) {
              const row = page.rows[index]!;
              this.dispatch(row, toItem(row, this.table), page.positions[index]!);
            }
            this.cursor = page.next;
            for (const member of this.positionFollowers) member.passed!(page.next);
            if (!this.cursor.upto) for (const wake of this.readWaiters.splice(0)) wake();
            return true;
          },
        });
        if (!result) {
          if (!unhashed || this.stopped) return;
          this.again = true;
          continue;
        }
        pending = result.pending;
      } while (this.again && !this.stopped);
    } catch (error) {
      this.fail(error);
      return;
    } finally {
      this.reading = false;
    }
    for (const listener of this.readListeners) listener(this);
    // A writer that left the NOTIFY to another is finishing its commit: read again soon.
    const delay = this.backoff.next(pending);
    if (delay !== undefined) {
      this.pendingTimer = setTimeout(() => {
        this.pendingTimer = undefined;
        this.nudge();
      }, delay);
      this.pendingTimer.unref();
    }
  }


  private dispatch(row: LogRow, item: LogItem, position: Position): void {
    for (const member of this.everyRow) member.receive(item, position);
    for (const member of this.partitioned) if (inPartition(member.partition!, row)) member.receive(item, position);
    if (this.byKey.size === 0) return;
    if (isSchemaChange(item) || item.op === 'truncate') {
      // Every row's stream hears of it.
      for (const members of this.byKey.values()) for (const member of members) member.receive(item, position);
      return;
    }
    const members = this.byKey.get(rowKeyString(this.table.keyColumns, item.key));
    if (members) for (const member of members) member.receive(item, position);
  }
}

/**
 * The feeds of one Tide, by table oid, and the poll that backs up NOTIFY: one query per
 * `pollInterval` for every idle feed together.
 */
export class Hub {
  private readonly feeds = new Map<number, TableFeed>();
  /** Readers of their own (transactions$), woken with the feeds. */
  private readonly wakeListeners = new Map<number, Set<() => void>>();
  private readonly pollTimer: NodeJS.Timeout;
  private polling = false;
  private pollFailingSince: number | undefined;

  constructor(private readonly settings: HubSettings) {
    this.pollTimer = setInterval(() => void this.poll(), settings.pollInterval);
    this.pollTimer.unref();
  }

  /** The table's feed, created at `start` if there is none. */
  feed(table: TableInfo, start: Position): TableFeed {
    let feed = this.feeds.get(table.relid);
    if (!feed) {
      feed = new TableFeed(table, start, this.settings, (idle) => {
        if (this.feeds.get(idle.table.relid) === idle) this.feeds.delete(idle.table.relid);
      });
      this.feeds.set(table.relid, feed);
    }
    return feed;
  }

  existing(relid: number): TableFeed | undefined {
    return this.feeds.get(relid);
  }

  /** Every live feed. */
  all(): IterableIterator<TableFeed> {
    return this.feeds.values();
  }

  nudge(relid: number): void {
    this.feeds.get(relid)?.nudge();
    for (const wake of this.wakeListeners.get(relid) ?? []) wake();
  }

  nudgeAll(): void {
    for (const feed of this.feeds.values()) feed.nudge();
    for (const listeners of this.wakeListeners.values()) for (const wake of listeners) wake();
  }

  /** Calls `wake` whenever one of these tables may have news. Returns the remover. */
  onWake(relids: readonly number[], wake: () => void): () => void {
    for (const relid of relids) addTo(this.wakeListeners, relid, wake);
    return () => {
      for (const relid of relids) removeFrom(this.wakeListeners, relid, wake);
    };
  }

  stop(): void {
    clearInterval(this.pollTimer);
    for (const feed of [...this.feeds.values()]) feed.stop();
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    const idle = new Map<number, Position>();
    for (const [relid, feed] of this.feeds) if (!feed.busy) idle.set(relid, feed.position);
    if (idle.size === 0) return;
    this.polling = true;
    try {
      const news = await this.settings.reader.tablesWithNews(idle);
      this.pollFailingSince = undefined;
      for (const relid of news) this.feeds.get(relid)?.nudge();
    } catch (error) {
      // Idle feeds learn here that the database is gone: past reconnectTimeout, they fail.
      this.pollFailingSince ??= Date.now();
      const giveUp = lostConnection(error, this.pollFailingSince, this.settings.reconnectTimeout, 'the watched tables');
      if (giveUp) {
        this.pollFailingSince = undefined;
        for (const relid of idle.keys()) this.feeds.get(relid)?.fail(giveUp);
      } else {
        this.settings.logger.warn('pgtide: polling the change log failed; retrying', { error: String(error) });
      }
    } finally {
      this.polling = false;
    }
  }
}

/** Adds `value` to the set under `key`, creating it. */
function addTo<K, V>(sets: Map<K, Set<V>>, key: K, value: V): void {
  let set = sets.get(key);
  if (!set) sets.set(key, (set = new Set()));
  set.add(value);
}

/** Removes `value` from the set under `key`, and the set once empty. */
function removeFrom<K, V>(sets: Map<K, Set<V>>, key: K, value: V): void {
  const set = sets.get(key);
  set?.delete(value);
  if (set?.size === 0) sets.delete(key);
}
