import { backoffDelay, sleep } from './backoff.js';
import { PgTideError } from './errors.js';
import type { FetchedPage, LogPage, LogReader, Position } from './log.js';
import { classifyDatabaseError, isTransient } from './sql.js';
import type { Logger } from './types.js';

/** What one run of {@link readPages} reads for, and hands its pages to. */
export interface PageLoop {
  readonly reader: LogReader;
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
    loop.reader.fetch(loop.relid, at, await loop.limit(), loop.checkPending, loop.consumers?.());
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
      await sleep(backoffDelay(attempt));
      attempt += 1;
      continue;
    }
    failingSince = undefined;
    attempt = 1;
    if (loop.stopped() || !loop.deliver(page)) return undefined;
    position = page.next;
    if (!page.full) return { position, pending: page.pending };
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
