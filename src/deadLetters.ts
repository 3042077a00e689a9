import type { Pool } from 'pg';
import { toChange } from './change.js';
import type { TableInfo } from './catalog.js';
import { recordDelivery, type AcknowledgementTarget } from './delivery.js';
import type { LogReader, RawRow } from './log.js';
import type { SchemaNames } from './sql.js';
import type { Change, Logger } from './types.js';

/** A change a consumer's handler gave up on, as `tide.deadLetters()` lists it. */
export interface DeadLetter {
  /** The dead letter's id (for `retryDeadLetters` and `dropDeadLetters`). */
  readonly id: string;
  /** The consumer (or consumer group) it belongs to. */
  readonly consumer: string;
  /** The change, decoded as the consumer's stream delivered it. */
  readonly change: Change;
  /** The last error's message. */
  readonly error: string;
  /** Handler calls made, over every delivery of it. */
  readonly attempts: number;
  /** When the last attempt failed. */
  readonly failedAt: Date;
  /** When a retry was asked for and not yet done (null otherwise). */
  readonly retryRequestedAt: Date | null;
}

/** Runs a query on a given session (a consumer's lease connection, say). */
export type SessionQuery = <R extends object>(text: string, values: readonly unknown[]) => Promise<R[]>;

/**
 * Keeps a change as a dead letter of `consumer`. A change that failed before (a
 * retried dead letter) adds its attempts and waits for the next retry request.
 */
export async function keepDeadLetter(
  pool: Pool,
  schema: SchemaNames,
  consumer: string,
  relid: number,
  changeId: string,
  error: string,
  attempts: number,
): Promise<void> {
  await pool.query(
    `INSERT INTO ${schema.ident}.dead_letters (consumer, relid, change_id, error, attempts) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (consumer, change_id) DO UPDATE
       SET error = excluded.error, attempts = dead_letters.attempts + excluded.attempts, failed_at = now(),
           retry_requested_at = NULL, claimed_pid = NULL, claimed_backend_start = NULL`,
    [consumer, relid, changeId, error, attempts],
  );
}

const rawColumns = `l.id::text AS id, l.txid::text AS txid, l.op, l.changed, l.new, l.old, l.shape,
                    (extract(epoch FROM l.written_at) * 1000)::float8 AS written_ms`;

/** A consumer's dead letters, oldest first. `describe` describes a table by its quoted name. */
export async function listDeadLetters(
  pool: Pool,
  schema: SchemaNames,
  reader: LogReader,
  consumer: string,
  describe: (qualified: string) => Promise<TableInfo>,
): Promise<DeadLetter[]> {
  const { rows } = await pool.query<
    RawRow & { letter: string; qualified: string; error: string; attempts: number; failed_at: Date; retry_requested_at: Date | null }
  >(
    `SELECT d.id::text AS letter, format('%I.%I', w.schema_name, w.table_name) AS qualified, d.error, d.attempts, d.failed_at,
            d.retry_requested_at, ${rawColumns}
       FROM ${schema.ident}.dead_letters d JOIN ${schema.ident}.log l ON l.relid = d.relid AND l.id = d.change_id
       JOIN ${schema.ident}.watched w ON w.relid = d.relid
      WHERE d.consumer = $1 ORDER BY d.id`,
    [consumer],
  );
  const decoded = await reader.decodeRows(rows);
  const letters: DeadLetter[] = [];
  for (let index = 0; index < rows.length; index += 1) {
    const row = rows[index]!;
    letters.push({
      id: row.letter,
      consumer,
      change: toChange(decoded[index]!, await describe(row.qualified)),
      error: row.error,
      attempts: row.attempts,
      failedAt: row.failed_at,
      retryRequestedAt: row.retry_requested_at,
    });
  }
  return letters;
}

/** Asks for dead letters (all of the consumer's, or these ids) to be delivered again; returns how many. */
export async function requestRetry(pool: Pool, schema: SchemaNames, consumer: string, ids?: readonly string[]): Promise<number> {
  const { rows } = await pool.query<{ count: number }>(
    `WITH asked AS (
       UPDATE ${schema.ident}.dead_letters SET retry_requested_at = now(), claimed_pid = NULL, claimed_backend_start = NULL
        WHERE consumer = $1 AND ($2::int8[] IS NULL OR id = ANY ($2::int8[])) RETURNING 1),
     counted AS (SELECT count(*)::int AS count FROM asked)
     SELECT count, CASE WHEN count > 0 THEN pg_notify($3, $4) END FROM counted`,
    [consumer, ids ?? null, schema.name, `retry:${consumer}`],
  );
  return rows[0]!.count;
}

/** Removes dead letters (all of the consumer's, or these ids); returns how many. */
export async function dropDeadLetters(pool: Pool, schema: SchemaNames, consumer: string, ids?: readonly string[]): Promise<number> {
  const { rowCount } = await pool.query(
    `DELETE FROM ${schema.ident}.dead_letters WHERE consumer = $1 AND ($2::int8[] IS NULL OR id = ANY ($2::int8[]))`,
    [consumer, ids ?? null],
  );
  return rowCount ?? 0;
}

/** What delivering retried dead letters needs from its stream. */
export interface RetrySettings {
  readonly pool: Pool;
  readonly schema: SchemaNames;
  readonly reader: LogReader;
  readonly logger: Logger;
  readonly consumer: string;
  readonly table: TableInfo;
  /** Queries on the reader's own session: a claim lapses when that session ends. */
  readonly session: SessionQuery;
  /** Emits a retried change (the stream's filters and schema apply); false if it skipped it. */
  readonly emit: (change: Change) => boolean;
}

/**
 * Delivers a consumer's dead letters again once a retry was asked for: its reader
 * claims them on its own session (so a reader that dies before finishing leaves them
 * to the next one), emits their changes, and removes each once it is processed, or
 * keeps it again, with its new error, if the handler gives up once more. Retried
 * changes come outside their row's order: they failed in it already.
 */
export class RetryDelivery implements AcknowledgementTarget {
  private readonly letters = new Map<number, string>();
  private sequence = 0;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;

  constructor(private readonly settings: RetrySettings) {}

  /** Looks for retries asked for (at start, and on each `retry:` signal). */
  poll(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.deliver()
      .catch((error: unknown) =>
        this.settings.logger.warn('pgtide: delivering retried dead letters failed; they are retried later', {
          consumer: this.settings.consumer,
          error: String(error),
        }),
      )
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.poll();
        }
      });
  }

  stop(): void {
    this.stopped = true;
  }

  complete(number: number): void {
    const letter = this.letters.get(number);
    if (letter === undefined) return;
    this.letters.delete(number);
    const { pool, schema } = this.settings;
    pool.query(`DELETE FROM ${schema.ident}.dead_letters WHERE id = $1`, [letter]).catch((error: unknown) =>
      this.settings.logger.warn('pgtide: removing a retried dead letter failed; it will be delivered again', { error: String(error) }),
    );
  }

  ambiguous(): void {
    // Retried changes are only matched through the objects they were emitted as.
  }

  async deadLetter(number: number, error: string, attempts: number): Promise<void> {
    const letter = this.letters.get(number);
    if (letter === undefined) return;
    const { pool, schema } = this.settings;
    await pool.query(
      `UPDATE ${schema.ident}.dead_letters SET error = $2, attempts = attempts + $3, failed_at = now(),
              retry_requested_at = NULL, claimed_pid = NULL, claimed_backend_start = NULL
        WHERE id = $1`,
      [letter, error, attempts],
    );
    this.letters.delete(number);
  }

  private async deliver(): Promise<void> {
    const { schema, consumer, table } = this.settings;
    const claimed = await this.settings.session<{ letter: string; change_id: string }>(
      `UPDATE ${schema.ident}.dead_letters d
          SET claimed_pid = pg_backend_pid(),
              claimed_backend_start = (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid())
        WHERE d.consumer = $1 AND d.relid = $2 AND d.retry_requested_at IS NOT NULL
          AND (d.claimed_pid IS NULL OR NOT EXISTS (
                SELECT FROM pg_stat_activity a WHERE a.pid = d.claimed_pid AND a.backend_start = d.claimed_backend_start))
        RETURNING d.id::text AS letter, d.change_id::text AS change_id`,
      [consumer, table.relid],
    );
    if (claimed.length === 0 || this.stopped) return;
    const letterOf = new Map(claimed.map((row) => [row.change_id, row.letter]));
    const { rows } = await this.settings.pool.query<RawRow>(
      `SELECT ${rawColumns} FROM ${schema.ident}.log l WHERE l.relid = $1 AND l.id = ANY ($2::int8[]) ORDER BY l.id`,
      [table.relid, [...letterOf.keys()]],
    );
    const decoded = await this.settings.reader.decodeRows(rows);
    for (const row of decoded) {
      if (this.stopped) return;
      const change = toChange(row, table);
      const number = (this.sequence += 1);
      const letter = letterOf.get(row.id)!;
      this.letters.set(number, letter);
      recordDelivery(change, { target: this, number, id: change.id });
      if (!this.settings.emit(change)) this.complete(number);
    }
  }
}
