import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type pg from 'pg';
import { Observable, type Subscriber, type Subscription } from 'rxjs';
import type { TableInfo } from './catalog.js';
import { ChangeStream, emitRetried, selector, startPosition, trackedStream, type RunningStream, type StreamContext } from './changes.js';
import { holdPruneShared, positionValues } from './consumers.js';
import type { RetryDelivery } from './deadLetters.js';
import { PgTideError } from './errors.js';
import { configureSession, consumerLockKey, consumerLockKeyOf, consumerLockName, saveConsumerPosition, sessionClient, SessionQueue, type Lease } from './lease.js';
import type { Position, Queryable } from './log.js';
import { lostConnection, SharedPages } from './pages.js';
import { backoffDelay, sleep } from './backoff.js';
import { classifyDatabaseError, inTransaction } from './sql.js';
import type { Change, ChangesOptions, StreamEvent, StreamPhase } from './types.js';

/** Partitions of a group created without saying how many. */
export const defaultPartitions = 16;

/**
 * Milliseconds the membership must stay the same before a member takes partitions:
 * members that start together (or one after the other) settle on one split instead of
 * taking partitions only to hand most of them over, and read again, a moment later.
 */
const settleTime = 50;

/** The consumer name of a group's partition. */
export function partitionName(group: string, index: number): string {
  return `${group}/${index}`;
}

/**
 * One member of a consumer group: `changes$(table, { consumer, group: true })`.
 * Runs a stream per partition it holds (each a consumer of its own, see migration 5),
 * all fed by the table's one shared feed, and merges their changes; acknowledging a
 * change moves its partition's position only.
 */
export function groupEvents<Row>(context: StreamContext, table: string, options: ChangesOptions<Row>): Observable<StreamEvent<Row>> {
  return trackedStream(context, (subscriber) => new GroupMember<Row>(context, table, options, subscriber));
}

interface HeldPartition {
  stream: ChangeStream<unknown> | undefined;
  subscription: Subscription | undefined;
  caughtUp: boolean;
  draining: boolean;
}

/**
 * Rebalancing: the live members (those whose session is still open), ordered by when
 * they joined, split the partitions into contiguous ranges; each member takes what its
 * range holds once the partition's lock is free, and gives up what it no longer should
 * hold by draining it first: it stops delivering, waits until what it delivered is
 * processed, saves the position, and only then unlocks. So no two live members ever
 * work on one partition (so one row) at once, and the next holder starts exactly after
 * the last acknowledged change. A member whose process dies loses its session, so its
 * locks, at once (or, vanished without closing, by TCP keepalive within leaseTimeout):
 * the others resume its partitions from their saved positions.
 */
class GroupMember<Row> implements RunningStream {
  readonly consumer: string;
  private readonly member = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  private client: pg.Client | undefined;
  private session: SessionQueue | undefined;
  private ended = false;
  private stopping: Promise<void> | undefined;
  private info: TableInfo | undefined;
  private partitions = 0;
  private readonly held = new Map<number, HeldPartition>();
  private members = 0;
  /** The live members as last seen, and since when. */
  private membership = '';
  private membershipSince = Date.now();
  private lastShare = '';
  private caughtUpSent = false;
  /** Whether the member's current session has joined the group (false while it joins again). */
  private joined = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly unlisten: Array<() => void> = [];
  private balancing: Promise<void> | undefined;
  private balanceAgain = false;
  private retries: RetryDelivery | undefined;
  private retrySelect: ((change: Change) => Change | undefined) | undefined;
  /** Pages read once for all partitions this member holds. */
  private pages: SharedPages | undefined;
  private partitionNames: readonly string[] = [];

  constructor(
    private readonly context: StreamContext,
    private readonly table: string,
    private readonly options: ChangesOptions<Row>,
    private readonly subscriber: Subscriber<StreamEvent<Row>>,
  ) {
    this.consumer = options.consumer!;
  }

  get tableName(): string {
    return this.info?.qualified ?? '';
  }

  /** The member as a whole: its partitions' streams report their own phases too. */
  get phase(): StreamPhase {
    if (!this.joined) return this.caughtUpSent ? 'reconnecting' : 'starting';
    return this.caughtUpSent ? 'live' : 'replaying';
  }

  async run(): Promise<void> {
    try {
      const info = await this.context.prepare(this.table, this.options.columns, () => undefined);
      this.info = info;
      this.pages = new SharedPages(
        this.context.reader,
        () => ({ count: this.partitions, held: [...this.held.keys()] }),
        () => 2 * Math.max(4, this.held.size),
      );
      const requested = typeof this.options.group === 'object' ? this.options.group.partitions : undefined;
      this.partitions = await registerGroup(this.context, this.consumer, info, requested, (db) =>
        startPosition(this.context, info, this.options.from, {}, db),
      );
      this.partitionNames = Array.from({ length: this.partitions }, (_, index) => partitionName(this.consumer, index));
      if (this.ended) return;
      await this.join();
      if (this.ended) return;
      this.unlisten.push(this.context.onSignal('group', this.consumer, () => this.rebalance()));
      this.unlisten.push(this.context.onSignal('retry', this.consumer, () => this.retries?.poll()));
      this.retries = this.context.retryDelivery(this.consumer, info, (text, values) => this.query(text, values), (change) =>
        this.emitRetried(change),
      );
      this.retries.poll();
      const every = Math.max(100, Math.min(1000, this.context.sessions.leaseTimeout / 4));
      this.timer = setInterval(() => this.rebalance(), every);
      this.timer.unref();
      this.rebalance();
    } catch (error) {
      if (this.ended) return;
      if (this.context.closed()) void this.complete(false);
      else this.fail(classifyDatabaseError(error, `changes$('${this.table}', { group })`) ?? error);
    }
  }

  /** Opens the member's session and announces it (the others rebalance). */
  private async join(): Promise<void> {
    const client = sessionClient(this.context.sessions, 'pgtide:group');
    this.client = client;
    this.session = new SessionQueue(client);
    let lost = false;
    const onLost = (error?: Error) => {
      if (lost || this.client !== client) return;
      lost = true;
      this.sessionLost(error);
    };
    client.on('error', onLost);
    client.on('end', () => onLost());
    await client.connect();
    await configureSession(client, this.context.sessions.leaseTimeout);
    const { schema } = this.context.sessions;
    await this.query(
      `INSERT INTO ${schema.ident}.group_members (group_name, member, pid, backend_start)
         SELECT $1, $2, a.pid, a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()
       ON CONFLICT (group_name, member) DO UPDATE SET pid = excluded.pid, backend_start = excluded.backend_start, holds = '{}'`,
      [this.consumer, this.member],
    );
    await this.signalGroup();
    this.joined = true;
    this.context.phaseChanged();
  }

  /**
   * The member's session is gone (a server restart, say), and with it every partition
   * lock: stop every partition at once (what was processed and not saved is delivered
   * again, here or elsewhere), then join again as a new session, retrying while the
   * database is unreachable (up to `reconnectTimeout`).
   */
  private sessionLost(error: Error | undefined): void {
    if (this.ended || this.stopping) return;
    this.context.logger.warn(`pgtide: consumer group ${JSON.stringify(this.consumer)}: the member's session was lost; joining again`, {
      error: error?.message,
    });
    this.client = undefined;
    this.session = undefined;
    // The client of the next session is set at once (join); joined says when it is in.
    this.joined = false;
    this.context.phaseChanged();
    const partitions = [...this.held.values()];
    this.held.clear();
    for (const held of partitions) {
      void held.stream?.teardown(false);
      held.subscription?.unsubscribe();
    }
    this.lastShare = '';
    this.membership = '';
    // What was balancing on the lost session may never finish: the next session starts afresh.
    this.balancing = undefined;
    this.balanceAgain = false;
    void (async () => {
      const since = Date.now();
      for (let attempt = 1; !this.ended; attempt += 1) {
        try {
          await this.join();
          this.rebalance();
          return;
        } catch (failure) {
          this.client?.end().catch(() => undefined);
          this.client = undefined;
          this.session = undefined;
          const giveUp = lostConnection(failure, since, this.context.reconnectTimeout, `consumer group ${JSON.stringify(this.consumer)}`);
          if (giveUp) return this.fail(giveUp);
          await sleep(backoffDelay(attempt));
        }
      }
    })();
  }

  private query<R extends object>(text: string, values: readonly unknown[]): Promise<R[]> {
    return this.session!.query<R>(text, values);
  }

  private signalGroup(): Promise<unknown> {
    return this.query('SELECT pg_notify($1, $2)', [this.context.sessions.schema.name, `group:${this.consumer}`]);
  }

  /** Balances now, or right after the balancing under way. */
  private rebalance(): void {
    if (this.ended) return;
    if (this.balancing) {
      this.balanceAgain = true;
      return;
    }
    const balancing = this.balance()
      .catch((error: unknown) => {
        if (!this.ended && this.session) {
          this.context.logger.warn('pgtide: rebalancing a consumer group failed; trying again', { error: String(error) });
        }
      })
      .finally(() => {
        // A balancing on a session that was lost meanwhile is no longer the current one.
        if (this.balancing !== balancing) return;
        this.balancing = undefined;
        if (this.balanceAgain) {
          this.balanceAgain = false;
          this.rebalance();
        }
      });
    this.balancing = balancing;
  }

  private async balance(): Promise<void> {
    if (!this.session) return;
    const { schema } = this.context.sessions;
    const live = `EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = m.pid AND a.backend_start = m.backend_start)`;
    const rows = await this.query<{ member: string }>(
      `WITH gone AS (DELETE FROM ${schema.ident}.group_members m WHERE m.group_name = $1 AND NOT ${live})
       SELECT m.member FROM ${schema.ident}.group_members m WHERE m.group_name = $1 AND ${live} ORDER BY m.joined_at, m.member`,
      [this.consumer],
    );
    if (this.ended) return;
    const members = rows.map((row) => row.member);
    const me = members.indexOf(this.member);
    if (me < 0) throw new Error('this member is not registered');
    this.members = members.length;
    const desired = new Set<number>();
    for (let index = 0; index < this.partitions; index += 1) {
      if (Math.floor((index * members.length) / this.partitions) === me) desired.add(index);
    }
    for (const [index, held] of this.held) {
      if (!desired.has(index) && !held.draining) void this.giveUp(held);
    }
    const membership = members.join('\u0000');
    if (membership !== this.membership) {
      this.membership = membership;
      this.membershipSince = Date.now();
    }
    const unsettled = settleTime - (Date.now() - this.membershipSince);
    if (unsettled > 0) {
      setTimeout(() => this.rebalance(), unsettled).unref();
      await this.report();
      return;
    }
    const wanted = [...desired].filter((index) => !this.held.has(index));
    if (wanted.length > 0) {
      // Every free one in one round trip, and all taken before any reads: the partitions'
      // first pages are then read for the member's whole share at once (SharedPages).
      const locked = await this.query<{ index: number }>(
        `SELECT w.index FROM unnest($1::int[], $2::text[]) AS w(index, name) WHERE pg_try_advisory_lock(${consumerLockKeyOf('w.name')})`,
        [wanted, wanted.map((index) => consumerLockName(schema, partitionName(this.consumer, index)))],
      );
      if (this.ended) return;
      for (const { index } of locked) this.take(index);
    }
    await this.report();
  }

  /** Starts reading a partition whose lock this member just took. */
  private take(index: number): void {
    const name = partitionName(this.consumer, index);
    const { schema } = this.context.sessions;
    const held: HeldPartition = { stream: undefined, subscription: undefined, caughtUp: false, draining: false };
    this.held.set(index, held);
    const lease: Lease = {
      acquire: () => Promise.resolve(!this.ended),
      // The member's session is every partition's: losing it stops them all (see sessionLost).
      onLost: () => undefined,
      save: (position: Position) => saveConsumerPosition(this.session!, schema, name, position),
      query: (text, values) => this.query(text, values),
      release: () => this.unlock(index, held),
      // While its stream retries its start, the member holds the partition on.
      retained: true,
    };
    const context: StreamContext = { ...this.context, lease: () => lease };
    // The member's in-flight window is shared by its partitions.
    const maxInFlight = Math.max(1, Math.ceil((this.options.maxInFlight ?? 1000) / this.partitions));
    const partitionOptions: ChangesOptions<Row> = { ...this.options, consumer: name, group: false, maxInFlight };
    const events = new Observable<StreamEvent<Row>>((subscriber) => {
      const stream = new ChangeStream<Row>(context, this.table, partitionOptions, subscriber, {}, {
        group: this.consumer,
        index,
        count: this.partitions,
        pages: this.pages!,
        consumers: this.partitionNames,
      });
      held.stream = stream as ChangeStream<unknown>;
      const untrack = this.context.track(stream);
      void stream.run();
      return () => {
        untrack();
        void stream.teardown(true);
      };
    });
    held.subscription = events.subscribe({
      next: (event) => this.fromPartition(index, held, event),
      error: (error: unknown) => this.fail(error),
    });
  }

  /** Drains a partition that another member should hold now, then lets it go. */
  private async giveUp(held: HeldPartition): Promise<void> {
    held.draining = true;
    try {
      await held.stream?.drain();
    } catch (error) {
      this.fail(error);
    }
  }

  /**
   * The partition's stream ended (drained, or the member ends): unlock it for the next
   * holder. Only the holding it ended: a stream of a lost session may end after the next
   * session took the partition again.
   */
  private async unlock(index: number, held: HeldPartition): Promise<void> {
    if (this.held.get(index) !== held) return;
    this.held.delete(index);
    if (!this.session || this.stopping) return;
    const { schema } = this.context.sessions;
    try {
      await this.query(`SELECT pg_advisory_unlock(${consumerLockKey})`, [consumerLockName(schema, partitionName(this.consumer, index))]);
      await this.signalGroup();
      await this.report();
    } catch (error) {
      this.context.logger.warn('pgtide: releasing a consumer group partition failed', { error: String(error) });
    }
  }

  private fromPartition(index: number, held: HeldPartition, event: StreamEvent<Row>): void {
    if (this.ended) return;
    switch (event.kind) {
      case 'change':
        this.subscriber.next(event);
        return;
      case 'caught-up':
        held.caughtUp = true;
        if (!this.caughtUpSent && [...this.held.values()].every((partition) => partition.caughtUp || partition.draining)) {
          this.caughtUpSent = true;
          this.context.phaseChanged();
          this.subscriber.next(event);
        }
        return;
      case 'schema':
        // Every partition reads the table's schema changes; one says so.
        if (index === Math.min(...this.held.keys())) this.subscriber.next(event);
        return;
      default:
        return;
    }
  }

  /** Records what this member holds, and tells the subscriber when that changed. */
  private async report(): Promise<void> {
    if (this.ended) return;
    const holds = [...this.held].filter(([, held]) => !held.draining).map(([index]) => index).sort((a, b) => a - b);
    const share = `${holds.join(',')}/${this.members}`;
    if (share === this.lastShare) return;
    this.lastShare = share;
    const { schema } = this.context.sessions;
    await this.query(`UPDATE ${schema.ident}.group_members SET holds = $3 WHERE group_name = $1 AND member = $2`, [
      this.consumer,
      this.member,
      holds,
    ]);
    if (this.ended) return;
    this.subscriber.next({
      kind: 'group',
      consumer: this.consumer,
      member: this.member,
      holds,
      partitions: this.partitions,
      members: this.members,
    });
    if (holds.length === 0 && !this.caughtUpSent && this.held.size === 0) {
      // Holding nothing, this member has nothing to replay.
      this.caughtUpSent = true;
      this.context.phaseChanged();
      this.subscriber.next({ kind: 'caught-up' });
    }
  }

  /** A retried dead letter: any member delivers it, through the group's columns and schema. */
  private emitRetried(change: Change): boolean {
    if (this.ended) return false;
    this.retrySelect ??= selector(this.info!, this.options, undefined);
    return emitRetried(change, this.retrySelect, this.options, this.info!, this.subscriber, (error) => this.fail(error));
  }

  async complete(flush: boolean): Promise<void> {
    if (this.ended) return;
    const stopped = this.teardown(flush);
    this.subscriber.complete();
    await stopped;
  }

  fail(error: unknown): void {
    if (this.ended) return;
    void this.teardown(false);
    this.subscriber.error(error);
  }

  /**
   * Ends the member: each partition saves its position (with `flush`), then the
   * session ends, which unlocks them all at once, and the others are told.
   */
  teardown(flush: boolean): Promise<void> {
    if (!this.stopping) {
      this.ended = true;
      clearInterval(this.timer);
      for (const stop of this.unlisten.splice(0)) stop();
      this.retries?.stop();
      const partitions = [...this.held.values()];
      this.stopping = (async () => {
        await Promise.all(partitions.map((held) => held.stream?.teardown(flush)));
        for (const held of partitions) held.subscription?.unsubscribe();
        const client = this.client;
        if (!client) return;
        const { schema } = this.context.sessions;
        await this.query(`DELETE FROM ${schema.ident}.group_members WHERE group_name = $1 AND member = $2`, [this.consumer, this.member])
          .then(() => this.signalGroup())
          .catch(() => undefined);
        await client.end().catch(() => undefined);
      })();
    }
    return this.stopping;
  }
}

/**
 * Creates the group with its partitions (each a consumer at `start`, computed once,
 * under the shared prune lock) unless it exists; returns its partition count. Refuses
 * a group of another table, a partition count other than the group's, and a name a
 * plain consumer has.
 */
async function registerGroup(
  context: StreamContext,
  name: string,
  info: TableInfo,
  requested: number | undefined,
  start: (db: Queryable) => Promise<Position>,
): Promise<number> {
  const { pool, schema } = context.sessions;
  return inTransaction(pool, async (client) => {
    await holdPruneShared(client, schema);
    const created = await client.query(
      `INSERT INTO ${schema.ident}.groups (name, relid, partitions) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING 1`,
      [name, info.relid, requested ?? defaultPartitions],
    );
    if (created.rows.length > 0) {
      const names = Array.from({ length: requested ?? defaultPartitions }, (_, index) => partitionName(name, index));
      const { rows: taken } = await client.query<{ name: string }>(
        `SELECT name FROM ${schema.ident}.consumers WHERE name = $1 OR name = ANY ($2) LIMIT 1`,
        [name, names],
      );
      if (taken.length > 0) {
        throw new PgTideError(
          'CONSUMER_GROUP_MISMATCH',
          `consumer ${JSON.stringify(taken[0]!.name)} exists as a plain consumer; a consumer group named ${JSON.stringify(name)} needs its name and ${JSON.stringify(`${name}/<n>`)}`,
          { consumer: name },
        );
      }
      const position = await start(client);
      await client.query(
        `INSERT INTO ${schema.ident}.consumers (name, relids, era, base, upto, after_id, group_name, part)
           SELECT n, ARRAY[$2::oid], $3, $4, $5, $6, $7, ordinality - 1 FROM unnest($1::text[]) WITH ORDINALITY AS p (n, ordinality)`,
        [names, info.relid, ...positionValues(position), name],
      );
      return names.length;
    }
    const { rows } = await client.query<{ relid: number; partitions: number }>(
      `SELECT relid::int8::float8 AS relid, partitions FROM ${schema.ident}.groups WHERE name = $1`,
      [name],
    );
    const group = rows[0]!;
    if (group.relid !== info.relid) {
      throw new PgTideError(
        'CONSUMER_TABLE_MISMATCH',
        `consumer group ${JSON.stringify(name)} follows another table, not ${info.qualified}; consumer names are unique`,
        { consumer: name, table: info.qualified },
      );
    }
    if (requested !== undefined && requested !== group.partitions) {
      throw new PgTideError(
        'CONSUMER_GROUP_MISMATCH',
        `consumer group ${JSON.stringify(name)} has ${group.partitions} partitions, not ${requested}; the count is fixed when the group is created`,
        { consumer: name, partitions: group.partitions },
      );
    }
    return group.partitions;
  });
}
