import pg from 'pg';
import { PgTideError } from './errors.js';
import type { Position } from './log.js';
import { expiredError, positionValues } from './consumers.js';
import type { SchemaNames } from './sql.js';
import type { Logger } from './types.js';

/** What a lease needs from its Tide. */
export interface LeaseSettings {
  /** How to open the lease's own connection (the pool's settings). */
  readonly config: pg.ClientConfig;
  readonly schema: SchemaNames;
  /** How long (ms) a dead holder may keep the lease before the server drops its connection. */
  readonly leaseTimeout: number;
  readonly logger: Logger;
}

/**
 * The right to be a consumer's one reader: a session-level advisory lock, on a
 * connection of its own, per consumer name. Only one session in the whole server holds
 * it; the others wait in `acquire` as hot standbys and get it the moment the holder's
 * session ends: on `release`, when its process exits or is killed (the kernel closes the
 * socket), or, for a holder that vanished without closing (a machine or network gone),
 * when the server's TCP keepalive gives up on it, within `leaseTimeout`.
 *
 * Positions are saved on this same connection: a save can only succeed while the lease
 * is held, so a process that lost it (and may already have a successor) cannot move the
 * consumer's position under the successor.
 */
export class ConsumerLease {
  private readonly client: pg.Client;
  private released = false;
  private held = false;
  private readonly lostHandlers: Array<(error: PgTideError) => void> = [];
  private readonly key: string;

  constructor(
    private readonly settings: LeaseSettings,
    readonly consumer: string,
  ) {
    this.key = `pgtide:consumer:${settings.schema.name}:${consumer}`;
    const keepAliveMs = Math.max(1000, Math.floor(settings.leaseTimeout / 3));
    this.client = new pg.Client({
      ...settings.config,
      application_name: 'pgtide:consumer',
      keepAlive: true,
      keepAliveInitialDelayMillis: keepAliveMs,
    });
    this.client.on('error', (error) => this.lose(error));
    this.client.on('end', () => this.lose(undefined));
  }

  /**
   * Takes the lease: at once if no one holds it, else after `onStandby()` as soon as
   * the holder lets go. Resolves false if released meanwhile.
   */
  async acquire(onStandby: () => void): Promise<boolean> {
    try {
      await this.client.connect();
      const seconds = Math.max(1, Math.floor(this.settings.leaseTimeout / 3000));
      // The server notices a vanished holder by TCP keepalive (idle + interval x count
      // seconds) or unacknowledged data (tcp_user_timeout), both within leaseTimeout;
      // a waiting standby must never time out by the session's own limits.
      await this.client.query(
        `SELECT set_config('tcp_keepalives_idle', $1, false), set_config('tcp_keepalives_interval', $1, false),
                set_config('tcp_keepalives_count', '2', false), set_config('tcp_user_timeout', $2, false),
                set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false),
                set_config('idle_session_timeout', '0', false)`,
        [String(seconds), String(this.settings.leaseTimeout)],
      );
      const lockKey = `('x' || left(md5($1), 16))::bit(64)::bigint`;
      const { rows } = await this.client.query<{ held: boolean }>(`SELECT pg_try_advisory_lock(${lockKey}) AS held`, [this.key]);
      if (!rows[0]!.held) {
        onStandby();
        await this.client.query(`SELECT pg_advisory_lock(${lockKey})`, [this.key]);
      }
      if (this.released) return false;
      this.held = true;
      return true;
    } catch (error) {
      if (this.released) return false;
      throw error;
    }
  }

  /** Calls `handler` if the lease's connection is lost while held. */
  onLost(handler: (error: PgTideError) => void): void {
    this.lostHandlers.push(handler);
  }

  /** Writes the consumer's position; refused once it expired or was dropped. */
  async save(position: Position): Promise<void> {
    const { schema } = this.settings;
    const { rows } = await this.client.query<{ updated: string; expired_at: Date | null; exists: boolean }>(
      `WITH saved AS (
         UPDATE ${schema.ident}.consumers SET era = $2, base = $3, upto = $4, after_id = $5, acknowledged_at = now()
          WHERE name = $1 AND expired_at IS NULL RETURNING 1)
       SELECT (SELECT count(*) FROM saved)::text AS updated,
              (SELECT c.expired_at FROM ${schema.ident}.consumers c WHERE c.name = $1) AS expired_at,
              EXISTS (SELECT FROM ${schema.ident}.consumers c WHERE c.name = $1) AS exists`,
      [this.consumer, ...positionValues(position)],
    );
    if (rows[0]!.updated === '0') throw this.refusal(rows[0]!);
  }

  /** Runs a query on the lease's session (work that must lapse with it). */
  async query<R extends object>(text: string, values: readonly unknown[]): Promise<R[]> {
    return (await this.client.query<R>(text, values as unknown[])).rows;
  }

  /** Lets go of the lease (a standby takes over) and closes its connection. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    // Ending the session releases the lock; a standby still waiting is cancelled by it.
    await this.client.end().catch(() => undefined);
  }

  private refusal(row: { expired_at: Date | null; exists: boolean }): PgTideError {
    if (row.exists && row.expired_at) return expiredError(this.consumer, row.expired_at);
    return new PgTideError(
      'UNKNOWN_CONSUMER',
      `consumer ${JSON.stringify(this.consumer)} was dropped while its stream ran; its position is not saved`,
      { consumer: this.consumer },
    );
  }

  private lose(error: Error | undefined): void {
    if (this.released || !this.held) return;
    this.held = false;
    this.released = true;
    const lost = new PgTideError(
      'CONSUMER_LEASE_LOST',
      `the connection holding consumer ${JSON.stringify(this.consumer)}'s lease was lost${error ? ` (${error.message})` : ''}; ` +
        'a standby may have taken over. Resubscribe (for example with retry()) to continue, as a standby if another process is active',
      { consumer: this.consumer },
      { cause: error },
    );
    this.settings.logger.warn(`pgtide: ${lost.message}`, { consumer: this.consumer });
    for (const handler of this.lostHandlers) handler(lost);
    this.client.end().catch(() => undefined);
  }
}
