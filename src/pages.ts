import { backoffDelay, sleep } from './backoff.js';
import { PgTideError } from './errors.js';
import type { FetchedPage, KeyHashing, LogPage, LogReader, Position } from './log.js';
import { classifyDatabaseError, isTransient } from './sql.js';
import type { Logger } from './types.js';

/** Where pages come from: the log reader, or pages shared by a group member's partitions. */
export type PageSource = Pick<LogReader, 'fetch' | 'decodePage'>;

/** What one run of {@link readPages} reads for, and hands its pages to. */
export interface PageLoop {
  readonly reader: PageSource;
  readonly relid: number;
  /** The table, `schema.name`, for messages. */
  readonly table: string;
  readonly logger: Logger;
  /** How long (ms) reads may keep failing before the loop fails with `CONNECTION_LOST`. */
  readonly reconnectTimeout: number;
  /** Ask whether writers are still committing (see `LogPage.pending`): live reads. */
  readonly checkPending: boolean;
  /** Rows the next page may hold (a consumer's in-flight window may make this wait). */
  limit(): number | Promise<number>;
  /**
   * Whether the next page may be read while this one is delivered: only where `limit()`
   * does not depend on what delivery does (no in-flight window).
   */
  readonly readAhead: boolean;
  /** The durable consumers the pages are read for (see `LogPage.expired`). */
  readonly consumers?: () => readonly string[];
  /** Whether (and for which partitions) the pages carry key hashes (see `KeyHashing`). */
  readonly keys?: () => KeyHashing | undefined;
  /** Reads started failing (true, before each retry) or work again (false). */
  readonly failing?: (failing: boolean) => void;
  /** Takes one page; returns false to stop reading. */
  deliver(page: LogPage): boolean;
  /** Whether the reader has gone away: stop quietly. */
  stopped(): boolean;
}

/**
 * The one page loop of pgtide, behind replay and the live feeds alike: reads pages from
 * `from` until one comes back short, retrying transient failures with backoff. Resolves
 * with where it ended and whether writers were still committing, or undefined once
 * stopped; rejects with a `PgTideError` when reads keep failing past `reconnectTimeout`
 * or fail for good (a missing privilege, say).
 */
export async function readPages(from: Position, loop: PageLoop): Promise<{ position: Position; pending: boolean } | undefined> {
  let position = from;
  let failingSince: number | undefined;
  let ahead: Promise<FetchedPage> | undefined;
  const fetch = async (at: Position): Promise<FetchedPage> =>
    loop.reader.fetch(loop.relid, at, await loop.limit(), loop.checkPending, loop.consumers?.(), loop.keys?.());
  for (let attempt = 1; ; ) {
    if (loop.stopped()) return undefined;
    let page: LogPage;
    try {
      const fetched = await (ahead ?? fetch(position));
      // The server reads the next page while this one is decoded and delivered; a read
      // that is never awaited (the loop stopped) must not reject unhandled.
      ahead = fetched.full && loop.readAhead ? fetch(fetched.next) : undefined;
      ahead?.catch(() => undefined);
      page = await loop.reader.decodePage(fetched);
    } catch (error) {
      ahead = undefined;
      if (loop.stopped()) return undefined;
      failingSince ??= Date.now();
      const giveUp = lostConnection(error, failingSince, loop.reconnectTimeout, loop.table);
      if (giveUp) throw giveUp;
      loop.logger.warn('pgtide: reading the change log failed; retrying', { table: loop.table, error: String(error), attempt });
      loop.failing?.(true);
      await sleep(backoffDelay(attempt));
      attempt += 1;
      continue;
    }
    if (failingSince !== undefined) loop.failing?.(false);
    failingSince = undefined;
    attempt = 1;
    if (loop.stopped() || !loop.deliver(page)) return undefined;
    position = page.next;
    if (!page.full) return { position, pending: page.pending };
  }
}

/**
 * Pages read once for the partitions of one consumer group member, which follow the log
 * in near lockstep. The server reads only the rows of the partitions the member holds
 * (see `KeyHashing`), so a member reads its share of the log, once. A page is fixed by
 * where it starts and whose rows it holds: read at any snapshot after that position, it
 * is a correct next page for each of those partitions, so a page read for one serves the
 * others arriving at the same position. Keeps the last `capacity` pages, for `lifetime` ms.
 */
export class SharedPages implements PageSource {
  private readonly pages = new Map<string, { readonly fetched: Promise<FetchedPage>; readonly at: number }>();
  private readonly decoded = new WeakMap<FetchedPage, Promise<LogPage>>();

  constructor(
    private readonly reader: LogReader,
    /** The group's partition count, and the partitions the member holds now. */
    private readonly partitions: () => { readonly count: number; readonly held: readonly number[] },
    private readonly capacity: () => number,
    private readonly lifetime = 10_000,
  ) {}

  fetch(relid: number, position: Position, limit: number, checkPending?: boolean, consumers?: readonly string[]): Promise<FetchedPage> {
    const { count, held } = this.partitions();
    const parts = [...held].sort((a, b) => a - b);
    const key = [relid, position.era, position.base.text, position.upto?.text, position.afterId, limit, checkPending, consumers?.join('\u0000'), parts.join(',')].join('|');
    const now = Date.now();
    const known = this.pages.get(key);
    if (known && now - known.at < this.lifetime) return known.fetched;
    const fetched = this.reader.fetch(relid, position, limit, checkPending, consumers, { count, parts });
    this.pages.delete(key);
    this.pages.set(key, { fetched, at: now });
    // A failed read is not kept: the next reader tries again.
    fetched.catch(() => this.pages.get(key)?.fetched === fetched && this.pages.delete(key));
    for (const [oldest, entry] of this.pages) {
      if (this.pages.size <= this.capacity() && now - entry.at < this.lifetime) break;
      this.pages.delete(oldest);
    }
    return fetched;
  }

  decodePage(fetched: FetchedPage): Promise<LogPage> {
    let page = this.decoded.get(fetched);
    if (!page) {
      page = this.reader.decodePage(fetched);
      this.decoded.set(fetched, page);
    }
    return page;
  }
}

/**
 * After a failed read: the error to fail with, or undefined to retry. Transient trouble
 * (network, server restart) is retried until `reconnectTimeout` has passed since the
 * first failure; anything else fails at once.
 */
export function lostConnection(error: unknown, failingSince: number, reconnectTimeout: number, table: string): PgTideError | undefined {
  if (error instanceof PgTideError) return error;
  if (!isTransient(error)) {
    return (
      classifyDatabaseError(error, `reading changes of ${table}`) ??
      new PgTideError('CONNECTION_LOST', `reading changes of ${table} failed: ${String(error)}`, { table }, { cause: error })
    );
  }
  if (Date.now() - failingSince < reconnectTimeout) return undefined;
  return new PgTideError(
    'CONNECTION_LOST',
    `the database has been unreachable for ${Math.round((Date.now() - failingSince) / 1000)}s (reconnectTimeout): ${String(error)}`,
    { table },
    { cause: error },
  );
}
