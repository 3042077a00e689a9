import type { TableInfo } from './catalog.js';
import { rowKeyString, toChange } from './change.js';
import { backoffDelay } from './backoff.js';
import { PgTideError } from './errors.js';
import { classifyDatabaseError, isTransient } from './sql.js';
import { positionOf, type LogReader, type Position } from './log.js';
import type { Change, Logger } from './types.js';

/** A stream attached to a table's shared feed. */
export interface FeedMember {
  /** When set, the member only wants rows with this key (see `rowKeyString`). */
  readonly rowKey?: string;
  receive(change: Change, position: Position): void;
  /** The feed gave up (the database stayed unreachable): the member errors. */
  fail(error: unknown): void;
}

export interface HubSettings {
  readonly reader: LogReader;
  readonly logger: Logger;
  /** Rows per log query. */
  readonly pageSize: number;
  /** How often a feed reads without a wake-up: the fallback when NOTIFY is missed or down. */
  readonly pollInterval: number;
  /** How long (ms) reads may keep failing before the members are failed with `CONNECTION_LOST`. */
  readonly reconnectTimeout: number;
}

/**
 * Re-read delays while transactions are in flight (cluster-wide, so on a busy server
 * almost always): from `minBusyDelay`, doubling while nothing arrives.
 */
const minBusyDelay = 4;
const maxBusyDelay = 64;

/**
 * One reader per watched table, shared by every stream of this process that has caught
 * up with the live log. It reads a page per wake-up burst and fans rows out, by row key
 * where streams follow single rows.
 */
export class TableFeed {
  private readonly everyRow = new Set<FeedMember>();
  private readonly byKey = new Map<string, Set<FeedMember>>();
  private reading = false;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private busyDelay = minBusyDelay;
  private failures = 0;
  private failingSince: number | undefined;

  constructor(
    readonly table: TableInfo,
    private cursor: Position,
    private readonly settings: HubSettings,
    private readonly onIdle: (feed: TableFeed) => void,
  ) {}

  /** Everything at or before this position has been handed to the members. */
  get position(): Position {
    return this.cursor;
  }

  get size(): number {
    return this.everyRow.size + this.byKey.size;
  }

  add(member: FeedMember): void {
    if (member.rowKey === undefined) {
      this.everyRow.add(member);
    } else {
      let members = this.byKey.get(member.rowKey);
      if (!members) this.byKey.set(member.rowKey, (members = new Set()));
      members.add(member);
    }
    // A new member may have replayed up to a horizon held back by open transactions,
    // whose NOTIFY went to nobody: look at once rather than at the next poll.
    if (this.size === 1) this.nudge();
  }

  remove(member: FeedMember): void {
    if (member.rowKey === undefined) {
      this.everyRow.delete(member);
    } else {
      const members = this.byKey.get(member.rowKey);
      members?.delete(member);
      if (members?.size === 0) this.byKey.delete(member.rowKey);
    }
    if (this.size === 0) this.stop();
  }

  /** Something may have committed: read soon. Bursts of nudges coalesce into one read. */
  nudge(): void {
    if (this.stopped) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    void this.read();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.timer);
    this.onIdle(this);
  }

  private async read(): Promise<void> {
    this.reading = true;
    let inFlight = false;
    let delivered = false;
    try {
      do {
        this.again = false;
        const page = await this.settings.reader.page(this.table.relid, this.cursor, this.settings.pageSize);
        if (this.stopped) return;
        for (const row of page.rows) this.dispatch(toChange(row, this.table), positionOf(row));
        this.cursor = page.next;
        inFlight = page.inFlight;
        delivered ||= page.rows.length > 0;
        if (page.full) this.again = true;
      } while (this.again && !this.stopped);
      this.failures = 0;
      this.failingSince = undefined;
    } catch (error) {
      this.reading = false;
      this.failures += 1;
      this.failingSince ??= Date.now();
      const giveUp = lostConnection(error, this.failingSince, this.settings.reconnectTimeout, this.table.qualified);
      if (giveUp) {
        for (const member of [...this.everyRow, ...[...this.byKey.values()].flatMap((set) => [...set])]) member.fail(giveUp);
        this.stop();
        return;
      }
      this.settings.logger.warn('pgtide: reading the change log failed; retrying', {
        table: this.table.qualified,
        error: String(error),
        attempt: this.failures,
      });
      this.schedule(backoffDelay(this.failures));
      return;
    } finally {
      this.reading = false;
    }
    if (inFlight) {
      // Open transactions hold back rows, and a writer among them may have left the
      // NOTIFY to another: look again soon, backing off while nothing arrives.
      this.busyDelay = delivered ? minBusyDelay : Math.min(maxBusyDelay, this.busyDelay * 2);
      this.schedule(this.busyDelay);
    } else {
      this.busyDelay = minBusyDelay;
      this.schedule(this.settings.pollInterval);
    }
  }

  private schedule(delay: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.nudge();
    }, delay);
    this.timer.unref();
  }

  private dispatch(change: Change, position: Position): void {
    for (const member of this.everyRow) member.receive(change, position);
    if (this.byKey.size === 0) return;
    const members = this.byKey.get(rowKeyString(this.table.keyColumns, change.key));
    if (members) for (const member of members) member.receive(change, position);
  }
}

/** The feeds of one Tide, by table oid. */
export class Hub {
  private readonly feeds = new Map<number, TableFeed>();

  constructor(private readonly settings: HubSettings) {}

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

  nudge(relid: number): void {
    this.feeds.get(relid)?.nudge();
  }

  nudgeAll(): void {
    for (const feed of this.feeds.values()) feed.nudge();
  }

  stop(): void {
    for (const feed of [...this.feeds.values()]) feed.stop();
  }
}

/**
 * After a failed read: the error to fail streams with, or undefined to retry. Transient
 * trouble (network, server restart) is retried until `reconnectTimeout` has passed since
 * the first failure; anything else (a missing privilege, say) fails at once.
 */
export function lostConnection(error: unknown, failingSince: number, reconnectTimeout: number, table: string): PgTideError | undefined {
  if (!isTransient(error)) return classifyDatabaseError(error, `reading changes of ${table}`) ?? new PgTideError('CONNECTION_LOST', `reading changes of ${table} failed: ${String(error)}`, { table }, { cause: error });
  if (Date.now() - failingSince < reconnectTimeout) return undefined;
  return new PgTideError(
    'CONNECTION_LOST',
    `the database has been unreachable for ${Math.round((Date.now() - failingSince) / 1000)}s (reconnectTimeout): ${String(error)}`,
    { table },
    { cause: error },
  );
}
