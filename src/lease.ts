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

/** What a stream's reader holds for its consumer: a `ConsumerLease`, or a group member's hold on one partition. */
export interface Lease {
  /** Takes the lease (calling `onStandby` first if it must wait); false if released meanwhile. */
  acquire(onStandby: () => void): Promise<boolean>;
  /** Calls `handler` if the lease is lost while held. */
  onLost(handler: (error: PgTideError) => void): void;
  /** Writes the consumer's position while the lease is held. */
  save(position: Position): Promise<void>;
  /** Runs a query on the lease's session (work that must lapse with it). */
  query<R extends object>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** Lets go of the lease. */
  release(): Promise<void>;
  /**
   * Whether the lease stays held when the stream's start fails after taking it, the
   * stream retrying on it: a group partition's, which its member's session holds (see
   * group.ts). Otherwise a failed start releases the lease and the retry takes a new one.
   */
  readonly retained?: boolean;
}

/** A connection for a lease-like session: keepalive tuned so the server drops a vanished holder within `leaseTimeout`. */
export function sessionClient(settings: LeaseSettings, applicationName: string): pg.Client {
  return new pg.Client({
    ...settings.config,
    application_name: applicationName,
    keepAlive: true,
    keepAliveInitialDelayMillis: Math.max(1000, Math.floor(settings.leaseTimeout / 3)),
  });
}

/**
 * Sets the session so the server notices a vanished holder by TCP keepalive (idle +
 * interval x count seconds) or unacknowledged data (tcp_user_timeout), both within
 * leaseTimeout; and so a waiting session never times out by its own limits.
 */
export async function configureSession(client: pg.Client, leaseTimeout: number): Promise<void> {
  const seconds = Math.max(1, Math.floor(leaseTimeout / 3000));
  await client.query(
    `SELECT set_config('tcp_keepalives_idle', $1, false), set_config('tcp_keepalives_interval', $1, false),
            set_config('tcp_keepalives_count', '2', false), set_config('tcp_user_timeout', $2, false),
            set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false),
            set_config('idle_session_timeout', '0', false)`,
    [String(seconds), String(leaseTimeout)],
  );
}

/**
 * One query at a time on a session of its own (pg queues overlapping queries, but
 * deprecates doing so): position saves, claims and lock calls take turns.
 */
export class SessionQueue {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly client: pg.Client) {}

  query<R extends object>(text: string, values: readonly unknown[] = []): Promise<R[]> {
    const result = this.tail.then(() => this.client.query<R>(text, values as unknown[])).then((done) => done.rows);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

/** SQL: the 64-bit advisory lock key of a consumer (`$1`: `consumerLockName`). */
export const consumerLockKey = consumerLockKeyOf('$1');

/** The SQL of the advisory lock key of the consumer lock name `operand` (a parameter or a column). */
export function consumerLockKeyOf(operand: string): string {
  return `('x' || left(md5(${operand}), 16))::bit(64)::bigint`;
}

/** What a consumer's lock key is made from: its schema and name. */
export function consumerLockName(schema: SchemaNames, consumer: string): string {
  return `pgtide:consumer:${schema.name}:${consumer}`;
}

/** Writes a consumer's position on `client`'s session; refused once it expired or was dropped. */
export async function saveConsumerPosition(
  session: SessionQueue,
  schema: SchemaNames,
  consumer: string,
  position: Position,
): Promise<void> {
  const saved = await session.query(
    `UPDATE ${schema.ident}.consumers SET era = $2, base = $3, upto = $4, after_id = $5, acknowledged_at = now()
      WHERE name = $1 AND expired_at IS NULL RETURNING 1`,
    [consumer, ...positionValues(position)],
  );
  if (saved.length > 0) return;
  // Why it was refused, read by a statement of its own: an UPDATE that waited on the row
  // (prune expiring it, dropConsumer deleting it) re-checks the committed row, but the rest
  // of its statement still sees its older snapshot, where the consumer is live.
  const rows = await session.query<{ expired_at: Date | null }>(`SELECT expired_at FROM ${schema.ident}.consumers WHERE name = $1`, [consumer]);
  const expiredAt = rows[0]?.expired_at;
  if (expiredAt) throw expiredError(consumer, expiredAt);
  throw new PgTideError(
    'UNKNOWN_CONSUMER',
    `consumer ${JSON.stringify(consumer)} was dropped while its stream ran; its position is not saved`,
    { consumer },
  );
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
export class ConsumerLease implements Lease {
  private readonly client: pg.Client;
  private readonly session: SessionQueue;
  private released = false;
  private held = false;
  private readonly lostHandlers: Array<(error: PgTideError) => void> = [];
  private readonly key: string;

  constructor(
    private readonly settings: LeaseSettings,
    readonly consumer: string,
  ) {
    this.key = consumerLockName(settings.schema, consumer);
    this.client = sessionClient(settings, 'pgtide:consumer');
    this.session = new SessionQueue(this.client);
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
      await configureSession(this.client, this.settings.leaseTimeout);
      const { rows } = await this.client.query<{ held: boolean }>(`SELECT pg_try_advisory_lock(${consumerLockKey}) AS held`, [this.key]);
      if (!rows[0]!.held) {
        onStandby();
        await this.client.query(`SELECT pg_advisory_lock(${consumerLockKey})`, [this.key]);
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
  save(position: Position): Promise<void> {
    return saveConsumerPosition(this.session, this.settings.schema, this.consumer, position);
  }

  /** Runs a query on the lease's session (work that must lapse with it). */
  query<R extends object>(text: string, values: readonly unknown[]): Promise<R[]> {
    return this.session.query<R>(text, values);
  }

  /** Lets go of the lease (a standby takes over) and closes its connection. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    // Ending the session releases the lock; a standby still waiting is cancelled by it.
    await this.client.end().catch(() => undefined);
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
