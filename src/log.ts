import { createHash } from 'node:crypto';
import type { ClientBase, Pool } from 'pg';
import type { Counters } from './counters.js';
import { RowDecoder } from './decode.js';
import type { SchemaNames } from './sql.js';
import type { RowData } from './types.js';

/** The pool, or one client of it (a query inside a transaction). */
export type Queryable = Pool | ClientBase;

/** A `pg_snapshot`: which transactions had committed when it was taken. */
export interface Snapshot {
  readonly xmin: bigint;
  readonly xmax: bigint;
  /** Transactions in progress at the snapshot (below `xmax`). */
  readonly xip: ReadonlySet<bigint>;
  /** The `pg_snapshot` text form, `xmin:xmax:xip,...`. */
  readonly text: string;
}

export function parseSnapshot(text: string): Snapshot {
  const [xmin, xmax, inProgress] = text.split(':');
  return {
    xmin: BigInt(xmin!),
    xmax: BigInt(xmax!),
    xip: new Set((inProgress ?? '').split(',').filter(Boolean).map(BigInt)),
    text,
  };
}

/** `pg_visible_in_snapshot`: whether a transaction had ended when the snapshot was taken. */
export function visibleIn(snapshot: Snapshot, txid: bigint): boolean {
  return txid < snapshot.xmin || (txid < snapshot.xmax && !snapshot.xip.has(txid));
}

/** Whether `a` was taken no earlier than `b` (both of one xid space): it sees all `b` sees. */
export function atOrAfter(a: Snapshot, b: Snapshot): boolean {
  if (a.xmax !== b.xmax) return a.xmax > b.xmax;
  for (const txid of a.xip) if (!b.xip.has(txid)) return false;
  return true;
}

/** A snapshot in which no transaction is visible: the start of an era. */
export const NOTHING_VISIBLE = parseSnapshot('3:3:');
/** A snapshot in which every transaction is visible: the end of a closed era. */
export const EVERYTHING_VISIBLE = parseSnapshot('9223372036854775807:9223372036854775807:');

/**
 * What a stream (or durable consumer) has been delivered. In era `era`: every change
 * whose transaction is visible in `base`, plus, while a batch is under way, the changes
 * visible in `upto` but not in `base` with ids up to `afterId`. Every earlier era whole.
 */
export interface Position {
  readonly era: number;
  readonly base: Snapshot;
  readonly upto?: Snapshot;
  readonly afterId?: bigint;
}

/** A log row as read from the database, its rows decoded. */
export interface LogRow {
  readonly id: string;
  readonly txid: string;
  /** Insert, update, delete, truncate, or a schema change ('s': `shape` says the columns). */
  readonly op: 'i' | 'u' | 'd' | 't' | 's';
  readonly changed: string[] | null;
  readonly new: RowData | null;
  readonly old: RowData | null;
  readonly shape: number | null;
  /** The columns of `new` and `old`, in table order (the shape's); empty without a shape. */
  readonly columns: readonly string[];
  /** `written_at` as epoch milliseconds: parsing timestamps is a tenth of replay's CPU. */
  readonly written_ms: number;
  /**
   * The hash of the row's key fields as logged (migration 6), where the read asked for
   * it (`LogPage.keyHashes`), else null; non-negative; null for truncates and schema
   * changes, which have no key. A group partition of `count` holds the rows whose hash
   * modulo `count` is its index.
   */
  readonly key_hash: number | null;
}

/**
 * Key hashes a page read asks for (see `LogRow.key_hash`): every row's (`'hash'`), or,
 * with `parts`, only the rows of those partitions (of `count`) are read at all.
 */
export type KeyHashing = 'hash' | { readonly count: number; readonly parts: readonly number[] };

/**
 * Whether a row read with key hashes is the partition's (of `count`): rows without a
 * key (truncates, schema changes) are every partition's.
 */
export function inPartition(partition: { readonly count: number; readonly index: number }, row: Pick<LogRow, 'op' | 'key_hash'>): boolean {
  if (row.op !== 'i' && row.op !== 'u' && row.op !== 'd') return true;
  return (row.key_hash ?? 0) % partition.count === partition.index;
}

/** Whether two positions say the same (as saved: era, snapshots, id). */
export function samePosition(a: Position, b: Position): boolean {
  return a.era === b.era && a.base.text === b.base.text && a.upto?.text === b.upto?.text && a.afterId === b.afterId;
}

/** Whether the change (era, txid, id) is covered by `position`. */
export function isDelivered(position: Position, era: number, txid: bigint, id: bigint): boolean {
  if (era !== position.era) return era < position.era;
  if (visibleIn(position.base, txid)) return true;
  return position.upto !== undefined && id <= position.afterId! && visibleIn(position.upto, txid);
}

export interface LogPage {
  readonly rows: LogRow[];
  /** The position after each row (same length as `rows`). */
  readonly positions: Position[];
  /** Where the reader stands after this page. */
  readonly next: Position;
  /** Whether more rows are readable right away (the page was cut by the limit, or an era ended). */
  readonly full: boolean;
  /**
   * Whether a writer of this table that left the NOTIFY to another was still committing
   * when the page was read: its changes become readable in a moment.
   */
  readonly pending: boolean;
  /** Of the consumers the page was read for, those expired or dropped at its snapshot. */
  readonly expired: readonly string[];
  /** Whether its rows carry their key hashes (see `KeyHashing`). */
  readonly keyHashes: boolean;
}

/** A page as read, its rows still record text (see {@link LogReader.fetch}). */
export interface FetchedPage extends Omit<LogPage, 'rows'> {
  readonly raw: readonly RawRow[];
}

/** Reads the log in batches (see sql/000001.sql). One instance per Tide; queries are prepared. */
export class LogReader {
  private readonly pageQuery: string;
  private readonly pageQueryName: string;
  private readonly newsQuery: string;
  private readonly nowQuery: string;
  private readonly idQuery: string;
  /** Reads logged rows as the pool's own queries would return them. */
  readonly decoder: RowDecoder;
  /** Queries asked for and not sent yet, by what they ask (see `unsent`). */
  private readonly asked = new Map<string, Promise<unknown>>();

  constructor(
    private readonly pool: Pool,
    schema: SchemaNames,
    private readonly counters?: Counters,
  ) {
    this.decoder = new RowDecoder(pool, schema);
    this.pageQuery = `SELECT * FROM ${schema.ident}.read_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`;
    this.pageQueryName = preparedName(this.pageQuery);
    this.newsQuery = `SELECT array(SELECT relid::int8 FROM ${schema.ident}.tables_with_news($1::oid[], $2::pg_snapshot[]) relid)::text[] AS relids,
                             (SELECT max(era) FROM ${schema.ident}.eras) AS era`;
    this.nowQuery = `SELECT pg_current_snapshot()::text AS snapshot, (SELECT max(era) FROM ${schema.ident}.eras) AS era`;
    this.idQuery = `SELECT ${schema.ident}.era_of(id) AS era, pg_current_snapshot()::text AS snapshot,
                           EXISTS (SELECT FROM ${schema.ident}.eras e WHERE e.era > ${schema.ident}.era_of(id)) AS closed
                      FROM ${schema.ident}.log WHERE id = $1::int8 AND relid = $2`;
  }

  /**
   * The next page after `position`: the rest of its batch, or a new batch up to a fresh
   * snapshot; an era that has ended is read to its end, then the next one from its start.
   * `checkPending` asks whether writers are still committing (live reads).
   */
  async next(relid: number, position: Position, limit: number, checkPending = false): Promise<LogPage> {
    return this.decodePage(await this.fetch(relid, position, limit, checkPending));
  }

  /**
   * With `consumers`, the page also names those of them that were expired or dropped
   * when its rows were read (at the same snapshot): for the others, no prune that
   * expired them had deleted any of its rows.
   */

  /**
   * {@link next} without decoding its rows yet: where the page ends is known from the
   * ids alone, so the following page can be asked for while this one is decoded.
   */
  async fetch(
    relid: number,
    position: Position,
    limit: number,
    checkPending = false,
    consumers?: readonly string[],
    keys?: KeyHashing,
  ): Promise<FetchedPage> {
    const hashing = typeof keys === 'object' ? `${keys.count}:${keys.parts.join(',')}` : keys;
    const { era, base, upto, afterId } = position;
    const key = ['page', relid, era, base.text, upto?.text, afterId, limit, checkPending, consumers?.join('\u0000'), hashing].join('|');
    return this.unsent(key, () => this.fetchNow(relid, position, limit, checkPending, consumers, keys));
  }

  private async fetchNow(
    relid: number,
    position: Position,
    limit: number,
    checkPending: boolean,
    consumers: readonly string[] | undefined,
    keys: KeyHashing | undefined,
  ): Promise<FetchedPage> {
    const { rows } = await this.pool.query<RawRow & { snapshot: string; closed: boolean; pending: boolean; expired: string[] | null }>({
      name: this.pageQueryName,
      text: this.pageQuery,
      values: [
        relid,
        position.era,
        position.base.text,
        position.upto?.text ?? null,
        position.afterId?.toString() ?? null,
        limit,
        checkPending,
        consumers && consumers.length > 0 ? consumers : null,
        keys !== undefined,
        typeof keys === 'object' ? keys.count : null,
        typeof keys === 'object' ? keys.parts : null,
      ],
    });
    const first = rows[0]!;
    const found = first.id === null ? [] : rows;
    this.counters?.read(relid, found.length);
    const upto = position.upto ?? parseSnapshot(first.snapshot);
    if (!first.closed && !position.upto && upto.xmax < position.base.xmax) {
      // The xid counter went back (a failover to a standby that had not replayed
      // everything): later xids would look delivered. Forget what the base claims above it.
      return this.fetch(relid, { ...position, base: clampSnapshot(position.base, upto.xmax) }, limit, checkPending, consumers, keys);
    }
    const { era, base } = position;
    const positions = found.map((row): Position => ({ era, base, upto, afterId: BigInt(row.id) }));
    const full = found.length === limit;
    let next: Position;
    if (full) next = positions[positions.length - 1]!;
    // A batch that ends in a closed era leaves the rest of that era to read first.
    else if (first.closed && !position.upto) next = { era: era + 1, base: NOTHING_VISIBLE };
    else next = { era, base: upto };
    return {
      raw: found,
      positions,
      next,
      full: full || first.closed,
      pending: first.pending,
      expired: first.expired ?? [],
      keyHashes: keys !== undefined,
    };
  }

  /** A fetched page with its rows decoded as the pool would return them. */
  async decodePage(fetched: FetchedPage): Promise<LogPage> {
    const { raw, ...page } = fetched;
    return { ...page, rows: raw.length === 0 ? [] : await this.decode(raw) };
  }

  /**
   * One whole batch of several tables, read at one snapshot: every row, merged in id
   * order, and the position after the batch. For streams of whole transactions, whose
   * changes may span tables. `from` must be between batches.
   */
  async batch(
    relids: readonly number[],
    from: Position,
    pageSize: number,
    checkPending: boolean,
    consumers?: readonly string[],
  ): Promise<Batch> {
    const rows: Array<{ readonly relid: number; readonly row: LogRow }> = [];
    let upto: Snapshot | undefined;
    let next: Position = from;
    let pending = false;
    const expired = new Set<string>();
    for (const relid of relids) {
      let position: Position = upto ? { era: from.era, base: from.base, upto } : from;
      for (;;) {
        const page = await this.decodePage(await this.fetch(relid, position, pageSize, checkPending && relid === relids[0], consumers));
        pending ||= page.pending;
        for (const consumer of page.expired) expired.add(consumer);
        for (const row of page.rows) rows.push({ relid, row });
        // The first table's first page fixes the snapshot the others are read at.
        upto ??= page.positions[0]?.upto ?? (page.next.era > from.era ? EVERYTHING_VISIBLE : page.next.base);
        if (!page.next.upto) {
          if (relid === relids[0]) next = page.next;
          break;
        }
        position = page.next;
      }
    }
    rows.sort((a, b) => compareIds(a.row.id, b.row.id));
    return { rows, next, pending, expired: [...expired] };
  }

  /**
   * Runs `query` once for every caller that asks the same (`key`) before it is sent: a
   * microtask after the first asks. Each still gets an answer read after it asked (a
   * snapshot taken after its request), as from a query of its own: 10k rowId streams
   * subscribing at once ask for "now", then the page after it, each once, not 10k times.
   */
  private unsent<T>(key: string, query: () => Promise<T>): Promise<T> {
    let answer = this.asked.get(key) as Promise<T> | undefined;
    if (!answer) {
      answer = new Promise<T>((resolve, reject) => {
        queueMicrotask(() => {
          this.asked.delete(key);
          query().then(resolve, reject);
        });
      });
      this.asked.set(key, answer);
    }
    return answer;
  }

  /** Log rows read by other queries, decoded as pages are. */
  decodeRows(rows: readonly RawRow[]): Promise<LogRow[]> {
    return this.decode(rows);
  }

  private async decode(rows: readonly RawRow[]): Promise<LogRow[]> {
    const shapes = new Set<number>();
    for (const row of rows) if (row.shape !== null) shapes.add(row.shape);
    await this.decoder.load(shapes);
    return rows.map((row): LogRow => {
      const update = row.op === 'u' && row.new !== null && row.old !== null && row.changed !== null && row.shape !== null;
      const values = update
        ? this.decoder.decodeUpdate(row.new!, row.old!, row.changed!, row.shape!)
        : { new: this.decoder.decode(row.new, row.shape), old: this.decoder.decode(row.old, row.shape) };
      return {
        id: row.id,
        txid: row.txid,
        op: row.op,
        changed: row.changed,
        new: values.new,
        old: values.old,
        shape: row.shape,
        columns: row.shape === null ? [] : this.decoder.shape(row.shape).columns,
        written_ms: row.written_ms,
        key_hash: row.key_hash ?? null,
      };
    });
  }

  /** The position after everything committed so far ("now"). */
  now(db: Queryable = this.pool): Promise<Position> {
    // On a client of its own (a transaction), it must be read there.
    return db === this.pool ? this.unsent('now', () => this.nowOn(db)) : this.nowOn(db);
  }

  private async nowOn(db: Queryable): Promise<Position> {
    const { rows } = await db.query<{ snapshot: string; era: number }>(this.nowQuery);
    return { era: rows[0]!.era, base: parseSnapshot(rows[0]!.snapshot) };
  }

  /**
   * A start right after the change with this id: every committed change of the table
   * with a larger id, then everything committing later. Undefined if it is not in the log.
   */
  async positionAfterId(relid: number, id: string, db: Queryable = this.pool): Promise<Position | undefined> {
    const { rows } = await db.query<{ era: number; snapshot: string; closed: boolean }>(this.idQuery, [id, relid]);
    const row = rows[0];
    if (!row) return undefined;
    return {
      era: row.era,
      base: NOTHING_VISIBLE,
      upto: row.closed ? EVERYTHING_VISIBLE : parseSnapshot(row.snapshot),
      afterId: BigInt(id),
    };
  }

  /**
   * Of these tables, those whose position may have changes to read: one query for all.
   * A position mid-batch or in an ended era always has.
   */
  async tablesWithNews(positions: ReadonlyMap<number, Position>): Promise<Set<number>> {
    const settled = [...positions].filter(([, position]) => !position.upto);
    const { rows } = await this.pool.query<{ relids: string[]; era: number }>(this.newsQuery, [
      settled.map(([relid]) => relid),
      settled.map(([, position]) => position.base.text),
    ]);
    if (this.counters) this.counters.logQueries += 1;
    const news = new Set(rows[0]!.relids.map(Number));
    for (const [relid, position] of positions) if (position.upto || position.era !== rows[0]!.era) news.add(relid);
    return news;
  }
}

/** A log row as the page query returns it, its rows still record text. */
export type RawRow = Omit<LogRow, 'new' | 'old' | 'columns' | 'key_hash'> & {
  readonly new: string | null;
  readonly old: string | null;
  readonly key_hash?: number | null;
};

/** A batch of several tables (see `LogReader.batch`). */
export interface Batch {
  /** The rows of every table, in id order. */
  readonly rows: ReadonlyArray<{ readonly relid: number; readonly row: LogRow }>;
  /** Where the reader stands after the batch. */
  readonly next: Position;
  /** Whether writers that skipped NOTIFY were still committing (see `LogPage.pending`). */
  readonly pending: boolean;
  /** Of the consumers it was read for, those expired at one of its snapshots (see `LogPage.expired`). */
  readonly expired: readonly string[];
}

function compareIds(a: string, b: string): number {
  return a.length !== b.length ? a.length - b.length : a < b ? -1 : a > b ? 1 : 0;
}

/** The snapshot that sees what `snapshot` sees below `xmax`, and nothing above. */
function clampSnapshot(snapshot: Snapshot, xmax: bigint): Snapshot {
  const xmin = snapshot.xmin < xmax ? snapshot.xmin : xmax;
  const xip = [...snapshot.xip].filter((txid) => txid < xmax).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return parseSnapshot(`${xmin}:${xmax}:${xip.join(',')}`);
}

/** A prepared-statement name unique to the statement text (pg prepares per connection). */
function preparedName(text: string): string {
  return `pgtide_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`;
}
