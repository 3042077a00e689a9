import { createHash } from 'node:crypto';
import type { Pool } from 'pg';
import type { SchemaNames } from './sql.js';
import type { RowData } from './types.js';

/**
 * A place in one table's change order, (pos, id). Used as an exclusive lower bound:
 * "everything at or before here has been delivered".
 */
export interface Position {
  readonly pos: bigint;
  readonly id: bigint;
}

/** The largest log id (and position): a bound past every change. */
export const MAX_ID = 9223372036854775807n;

/** The position before every change. */
export const BEGINNING: Position = { pos: 0n, id: 0n };

/** The position after every change at or below a horizon. */
export function atHorizon(horizon: bigint): Position {
  return { pos: horizon, id: MAX_ID };
}

export function comparePositions(a: Position, b: Position): number {
  if (a.pos !== b.pos) return a.pos < b.pos ? -1 : 1;
  return a.id === b.id ? 0 : a.id < b.id ? -1 : 1;
}

export function laterPosition(a: Position, b: Position): Position {
  return comparePositions(a, b) >= 0 ? a : b;
}

/** A log row as read from the database. */
export interface LogRow {
  readonly id: string;
  readonly pos: string;
  readonly txid: string;
  readonly op: 'i' | 'u' | 'd';
  readonly changed: string[] | null;
  readonly new: RowData | null;
  readonly old: RowData | null;
  /** `written_at` as epoch milliseconds: parsing timestamps is a tenth of replay's CPU. */
  readonly written_ms: number;
}

export function positionOf(row: LogRow): Position {
  return { pos: BigInt(row.pos), id: BigInt(row.id) };
}

export interface LogPage {
  readonly rows: LogRow[];
  /** Where the reader stands after this page. */
  readonly next: Position;
  /** Whether the page was cut by the limit (more rows may be readable right away). */
  readonly full: boolean;
  /**
   * Whether transactions were in flight when the page was read: their changes are
   * not readable yet, and a writer among them may have skipped its NOTIFY.
   */
  readonly inFlight: boolean;
}

/** Reads one table's log in delivery order. One instance per Tide; queries are prepared. */
export class LogReader {
  private readonly toHorizon: string;
  private readonly toBound: string;
  private readonly toHorizonName: string;
  private readonly toBoundName: string;
  private readonly horizonQuery: string;
  private readonly idQuery: string;

  constructor(
    private readonly pool: Pool,
    schema: SchemaNames,
  ) {
    const columns =
      'l.id, l.pos, l.txid, l.op, l.changed, l.new, l.old, (extract(epoch FROM l.written_at) * 1000)::float8 AS written_ms';
    // The horizon comes from the same snapshot as the rows: every row at or below it is
    // committed and visible to this very statement (see sql/000001.sql).
    this.toHorizon = `
      WITH snap AS (SELECT pg_current_snapshot() AS s)
      SELECT pg_snapshot_xmin(snap.s)::text AS horizon,
             pg_snapshot_xmin(snap.s) <> pg_snapshot_xmax(snap.s) AS in_flight, ${columns}
        FROM snap LEFT JOIN LATERAL ${schema.ident}.read_page(
               $1, $2, $3, pg_snapshot_xmin(snap.s)::text::int8, ${MAX_ID}, $4) l ON true`;
    this.toBound = `SELECT ${columns} FROM ${schema.ident}.read_page($1, $2, $3, $4, $5, $6) l`;
    this.toHorizonName = preparedName(this.toHorizon);
    this.toBoundName = preparedName(this.toBound);
    this.horizonQuery = `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon`;
    this.idQuery = `SELECT pos::text, id::text FROM ${schema.ident}.log WHERE id = $1::int8 AND relid = $2`;
  }

  /** The next page after `after`, bounded by the current visibility horizon. */
  async page(relid: number, after: Position, limit: number): Promise<LogPage> {
    const { rows } = await this.pool.query<LogRow & { horizon: string; in_flight: boolean }>({
      name: this.toHorizonName,
      text: this.toHorizon,
      values: [relid, after.pos.toString(), after.id.toString(), limit],
    });
    const first = rows[0]!;
    const found = first.id === null ? [] : (rows as LogRow[]);
    const full = found.length === limit;
    const last = found[found.length - 1];
    const next = full ? positionOf(last!) : laterPosition(after, atHorizon(BigInt(first.horizon)));
    return { rows: found, next, full, inFlight: first.in_flight };
  }

  /** The next page after `after` up to and including `bound` (already known to be final). */
  async pageUpTo(relid: number, after: Position, bound: Position, limit: number): Promise<LogPage> {
    const { rows } = await this.pool.query<LogRow>({
      name: this.toBoundName,
      text: this.toBound,
      values: [relid, after.pos.toString(), after.id.toString(), bound.pos.toString(), bound.id.toString(), limit],
    });
    const full = rows.length === limit;
    const next = full ? positionOf(rows[rows.length - 1]!) : bound;
    return { rows, next, full, inFlight: false };
  }

  /** The position after everything committed so far ("now"). */
  async now(): Promise<Position> {
    const { rows } = await this.pool.query<{ horizon: string }>(this.horizonQuery);
    return atHorizon(BigInt(rows[0]!.horizon));
  }

  /** The position of the change with this id in this table, if it is still in the log. */
  async positionOfId(relid: number, id: string): Promise<Position | undefined> {
    const { rows } = await this.pool.query<{ pos: string; id: string }>(this.idQuery, [id, relid]);
    return rows[0] ? { pos: BigInt(rows[0].pos), id: BigInt(rows[0].id) } : undefined;
  }
}

/** A prepared-statement name unique to the statement text (pg prepares per connection). */
function preparedName(text: string): string {
  return `pgtide_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`;
}
