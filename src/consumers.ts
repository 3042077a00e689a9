import type { Pool } from 'pg';
import { PgTideError } from './errors.js';
import type { TableInfo } from './catalog.js';
import { parseSnapshot, type Position, type Queryable } from './log.js';
import { inTransaction, type SchemaNames } from './sql.js';

/** A durable consumer as `tide.consumers()` reports it. */
export interface ConsumerInfo {
  /** The consumer's name. */
  readonly name: string;
  /** The followed table, `schema.name` (null if it was dropped). */
  readonly table: string | null;
  /**
   * Id of the last change at or before the consumer's position that is still in the
   * log (null before the first, or once it has been pruned).
   */
  readonly acknowledgedId: string | null;
  /** Changes in the log after the consumer's position (not yet acknowledged). */
  readonly lagChanges: number;
  /** Seconds since the oldest unacknowledged change was written, or 0. */
  readonly lagSeconds: number;
  /** When its position was last saved. */
  readonly acknowledgedAt: Date;
  /** Set when the consumer fell more than `maxLag` changes behind and stopped holding the log. */
  readonly expiredAt: Date | null;
  /**
   * For a consumer group: its partitions and live members. The group's own figures are
   * those of its furthest-behind partition (lag, acknowledged id) and latest save.
   */
  readonly group?: GroupInfo;
}

/** A consumer group as `tide.consumers()` reports it. */
export interface GroupInfo {
  /** How many partitions the rows are split into. */
  readonly partitions: number;
  /** Live members, in the order they joined. */
  readonly members: readonly GroupMemberInfo[];
  /** Partitions no live member holds right now (being handed over, or no member runs). */
  readonly unheld: readonly number[];
}

/** One live member of a consumer group. */
export interface GroupMemberInfo {
  /** The member's id (`host:pid:random`), as its `events$` group events name it. */
  readonly member: string;
  /** When it joined the group. */
  readonly joinedAt: Date;
  /** The partitions it holds. */
  readonly holds: readonly number[];
  /** Changes after the position of its furthest-behind partition (0 holding none). */
  readonly lagChanges: number;
  /** Seconds since the oldest change it has not acknowledged was written, or 0. */
  readonly lagSeconds: number;
}

/** What `tide.prune()` did. */
export interface PruneResult {
  /** Log rows deleted. */
  readonly deleted: number;
  /** Consumers expired by this run for exceeding `maxLag`. */
  readonly expired: readonly string[];
}

/** Lock key shared by prune (exclusive) and consumer registration (shared). */
/**
 * Takes the prune lock shared, in `client`'s transaction: what registers consumers (and
 * computes their start) holds it, so a prune cannot run in between.
 */
export async function holdPruneShared(client: Queryable, schema: SchemaNames): Promise<void> {
  await client.query('SELECT pg_advisory_xact_lock_shared(hashtext($1))', [pruneLock(schema)]);
}

const pruneLock = (schema: SchemaNames) => `pgtide:prune:${schema.name}`;

/**
 * Registers a consumer at `start()` unless it exists. Runs under the shared prune lock,
 * and so does `start()`: a prune cannot delete what the start position still needs (say,
 * the change `from: { after }` names) between computing it and registering it, nor miss
 * a consumer being created.
 */
export async function registerConsumer(
  pool: Pool,
  schema: SchemaNames,
  name: string,
  relids: readonly number[],
  start: (db: Queryable) => Promise<Position>,
): Promise<void> {
  await inTransaction(pool, async (client) => {
    await holdPruneShared(client, schema);
    const position = await start(client);
    await client.query(
      `INSERT INTO ${schema.ident}.consumers (name, relids, era, base, upto, after_id) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (name) DO NOTHING`,
      [name, relids, ...positionValues(position)],
    );
  });
}

export interface StoredConsumer {
  /** The followed tables' oids, in the order the consumer was registered with. */
  readonly relids: readonly number[];
  readonly position: Position;
  readonly expiredAt: Date | null;
  /** The group it is a partition of, if any. */
  readonly groupName: string | null;
}

export async function readConsumer(pool: Pool, schema: SchemaNames, name: string): Promise<StoredConsumer | undefined> {
  const { rows } = await pool.query<{
    relids: string[];
    era: number;
    base: string;
    upto: string | null;
    after_id: string | null;
    expired_at: Date | null;
    group_name: string | null;
  }>(
    `SELECT relids::int8[]::text[] AS relids, era, base::text, upto::text, after_id::text, expired_at, group_name
       FROM ${schema.ident}.consumers WHERE name = $1`,
    [name],
  );
  const row = rows[0];
  if (!row) return undefined;
  const position: Position = {
    era: row.era,
    base: parseSnapshot(row.base),
    ...(row.upto === null ? {} : { upto: parseSnapshot(row.upto), afterId: BigInt(row.after_id!) }),
  };
  return { relids: row.relids.map(Number), position, expiredAt: row.expired_at, groupName: row.group_name };
}

export function positionValues(position: Position): [number, string, string | null, string | null] {
  return [
    position.era,
    position.base.text,
    position.upto?.text ?? null,
    position.upto && position.afterId !== undefined ? position.afterId.toString() : null,
  ];
}

/**
 * SQL: whether log row `l` is not yet delivered to consumer `c`: `delivered()` with the
 * row's era told by where its id falls among the eras' first ids, bounds computed once
 * per consumer (not `era_of()` per row, which made a lag count of a large log take
 * seconds per consumer).
 */
const undelivered = (schema: SchemaNames) => {
  const nextEraStarts = `coalesce((SELECT min(e.first_id) FROM ${schema.ident}.eras e WHERE e.era > c.era), 9223372036854775807)`;
  const eraStarts = `CASE WHEN c.era <= 1 THEN 0 ELSE coalesce((SELECT e.first_id FROM ${schema.ident}.eras e WHERE e.era = c.era), 0) END`;
  return `(l.id >= ${nextEraStarts}
           OR (l.id >= ${eraStarts}
               AND NOT pg_visible_in_snapshot(l.txid, c.base)
               AND NOT (c.upto IS NOT NULL AND l.id <= coalesce(c.after_id, 0) AND pg_visible_in_snapshot(l.txid, c.upto))))`;
};

/** SQL: log row `l` is no dead letter's change (those stay until dropped or retried). */
const notDeadLetter = (schema: SchemaNames) =>
  `NOT EXISTS (SELECT FROM ${schema.ident}.dead_letters d WHERE d.relid = l.relid AND d.change_id = l.id)`;

export async function listConsumers(pool: Pool, schema: SchemaNames): Promise<ConsumerInfo[]> {
  const { rows } = await pool.query<{
    name: string;
    table_name: string | null;
    acknowledged_id: string | null;
    lag_changes: number;
    lag_seconds: number;
    acknowledged_at: Date;
    expired_at: Date | null;
    group_name: string | null;
    part: number | null;
  }>(
    `SELECT c.name, c.group_name, c.part, CASE WHEN w.relid IS NOT NULL THEN format('%I.%I', w.schema_name, w.table_name) END AS table_name,
            (SELECT max(l.id)::text FROM ${schema.ident}.log l WHERE l.relid = ANY (c.relids) AND NOT (${undelivered(schema)})) AS acknowledged_id,
            (SELECT count(*) FROM ${schema.ident}.log l WHERE l.relid = ANY (c.relids) AND ${undelivered(schema)})::int8::float8 AS lag_changes,
            coalesce(extract(epoch FROM now() - (
              SELECT min(l.written_at) FROM ${schema.ident}.log l WHERE l.relid = ANY (c.relids) AND ${undelivered(schema)}
            )), 0)::float8 AS lag_seconds,
            c.acknowledged_at, c.expired_at
       FROM ${schema.ident}.consumers c LEFT JOIN ${schema.ident}.watched w ON w.relid = c.relids[1]
      ORDER BY c.name`,
  );
  const plain: ConsumerInfo[] = [];
  const partitions = new Map<string, Map<number, ConsumerInfo>>();
  for (const row of rows) {
    const info: ConsumerInfo = {
      name: row.name,
      table: row.table_name,
      acknowledgedId: row.acknowledged_id,
      lagChanges: row.lag_changes,
      lagSeconds: Math.max(0, row.lag_seconds),
      acknowledgedAt: row.acknowledged_at,
      expiredAt: row.expired_at,
    };
    if (row.group_name === null) plain.push(info);
    else {
      let parts = partitions.get(row.group_name);
      if (!parts) partitions.set(row.group_name, (parts = new Map()));
      parts.set(row.part!, info);
    }
  }
  if (partitions.size === 0) return plain;
  const { rows: members } = await pool.query<{ group_name: string; member: string; joined_at: Date; holds: number[] }>(
    `SELECT m.group_name, m.member, m.joined_at, m.holds FROM ${schema.ident}.group_members m
      WHERE EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = m.pid AND a.backend_start = m.backend_start)
      ORDER BY m.joined_at, m.member`,
  );
  for (const [name, parts] of partitions) {
    const all = [...parts.values()];
    const behind = (held: readonly ConsumerInfo[]) => held.reduce<ConsumerInfo | undefined>((worst, part) => (!worst || part.lagChanges > worst.lagChanges ? part : worst), undefined);
    const groupMembers = members
      .filter((row) => row.group_name === name)
      .map((row): GroupMemberInfo => {
        const held = row.holds.map((index) => parts.get(index)).filter((part): part is ConsumerInfo => part !== undefined);
        return {
          member: row.member,
          joinedAt: row.joined_at,
          holds: row.holds,
          lagChanges: behind(held)?.lagChanges ?? 0,
          lagSeconds: Math.max(0, ...held.map((part) => part.lagSeconds)),
        };
      });
    const heldSomewhere = new Set(groupMembers.flatMap((row) => row.holds));
    const worst = behind(all)!;
    plain.push({
      name,
      table: worst.table,
      acknowledgedId: worst.acknowledgedId,
      lagChanges: worst.lagChanges,
      lagSeconds: Math.max(0, ...all.map((part) => part.lagSeconds)),
      acknowledgedAt: new Date(Math.max(...all.map((part) => part.acknowledgedAt.getTime()))),
      expiredAt: all.find((part) => part.expiredAt)?.expiredAt ?? null,
      group: { partitions: parts.size, members: groupMembers, unheld: [...parts.keys()].filter((index) => !heldSomewhere.has(index)).sort((a, b) => a - b) },
    });
  }
  return plain.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Drops a consumer, or a whole consumer group (its partitions and members with it). */
export async function dropConsumer(pool: Pool, schema: SchemaNames, name: string): Promise<boolean> {
  const { rows } = await pool.query<{ dropped: boolean }>(
    `WITH plain AS (DELETE FROM ${schema.ident}.consumers WHERE name = $1 AND group_name IS NULL RETURNING 1),
          grouped AS (DELETE FROM ${schema.ident}.groups WHERE name = $1 RETURNING 1)
     SELECT EXISTS (SELECT FROM plain) OR EXISTS (SELECT FROM grouped) AS dropped`,
    [name],
  );
  return rows[0]!.dropped;
}

/** Refuses a plain consumer named like an existing consumer group. */
async function assertNotAGroup(pool: Pool, schema: SchemaNames, name: string): Promise<void> {
  const { rows } = await pool.query(`SELECT FROM ${schema.ident}.groups WHERE name = $1`, [name]);
  if (rows.length > 0) {
    throw new PgTideError(
      'CONSUMER_GROUP_MISMATCH',
      `${JSON.stringify(name)} is a consumer group: read it with { consumer: ${JSON.stringify(name)}, group: true }, or pick another name`,
      { consumer: name },
    );
  }
}

/**
 * Deletes what no one needs: per table, the changes at or below every live consumer's
 * position, and, for tables no live consumer follows, changes older than `retention`.
 * Consumers more than `maxLag` changes behind are expired first (they stop holding the
 * log and their streams fail with `CONSUMER_EXPIRED`). Runs under the exclusive prune
 * lock, so no consumer can be registered mid-decision; acknowledgements only move
 * positions forward, so one that lands meanwhile only means less is deleted.
 */
export async function prune(
  pool: Pool,
  schema: SchemaNames,
  options: { readonly retentionSeconds: number; readonly maxLag: number },
): Promise<PruneResult> {
  return inTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [pruneLock(schema)]);
    const expired = await client.query<{ name: string }>(
      `UPDATE ${schema.ident}.consumers c SET expired_at = now()
        WHERE c.expired_at IS NULL
          AND (SELECT count(*) FROM (
                 SELECT FROM ${schema.ident}.log l WHERE l.relid = ANY (c.relids) AND ${undelivered(schema)} LIMIT $1 + 1
               ) behind) > $1
        RETURNING c.name`,
      [options.maxLag],
    );
    // Every process with a stream of an expired consumer stops it (see the Listener);
    // delivered at commit, with the deletions below.
    for (const { name } of expired.rows) {
      await client.query('SELECT pg_notify($1, $2)', [schema.name, `expired:${name}`]);
    }
    const byConsumers = await client.query(
      `DELETE FROM ${schema.ident}.log l
        WHERE l.relid IN (SELECT unnest(relids) FROM ${schema.ident}.consumers WHERE expired_at IS NULL)
          AND NOT EXISTS (SELECT FROM ${schema.ident}.consumers c
                           WHERE l.relid = ANY (c.relids) AND c.expired_at IS NULL AND ${undelivered(schema)})
          AND ${notDeadLetter(schema)}`,
    );
    const byAge = await client.query(
      `DELETE FROM ${schema.ident}.log l
        WHERE l.written_at < now() - make_interval(secs => $1)
          AND NOT EXISTS (SELECT FROM ${schema.ident}.consumers c WHERE l.relid = ANY (c.relids) AND c.expired_at IS NULL)
          AND ${notDeadLetter(schema)}`,
      [options.retentionSeconds],
    );
    return {
      deleted: (byConsumers.rowCount ?? 0) + (byAge.rowCount ?? 0),
      expired: expired.rows.map((row) => row.name),
    };
  });
}

export function expiredError(name: string, expiredAt: Date): PgTideError {
  return new PgTideError(
    'CONSUMER_EXPIRED',
    `consumer ${JSON.stringify(name)} fell more than maxLag changes behind and was expired at ${expiredAt.toISOString()}; ` +
      'changes it had not acknowledged may be pruned. dropConsumer() it to start over',
    { consumer: name, expiredAt },
  );
}

/**
 * A consumer's position, registering it at `start` on first use. Refuses a name that
 * follows other tables, an expired consumer, and a position of an era this database does
 * not have (its eras were lost, or the row came from another database): pgtide cannot
 * tell what such a position covers, so it never guesses.
 */
export async function consumerPosition(
  pool: Pool,
  schema: SchemaNames,
  name: string,
  tables: readonly TableInfo[],
  start: (db: Queryable) => Promise<Position>,
  group?: string,
): Promise<Position> {
  const relids = tables.map((table) => table.relid);
  let stored = await readConsumer(pool, schema, name);
  if (!stored && group === undefined) {
    await assertNotAGroup(pool, schema, name);
    await registerConsumer(pool, schema, name, relids, start);
    stored = (await readConsumer(pool, schema, name))!;
  }
  if (!stored || (stored.groupName ?? undefined) !== group) {
    throw new PgTideError(
      'CONSUMER_GROUP_MISMATCH',
      stored?.groupName
        ? `consumer ${JSON.stringify(name)} is a partition of consumer group ${JSON.stringify(stored.groupName)}; pick another name`
        : `consumer ${JSON.stringify(name)} is not a partition of group ${JSON.stringify(group)} (a plain consumer has that name)`,
      { consumer: name },
    );
  }
  const same = stored.relids.length === relids.length && relids.every((relid) => stored.relids.includes(relid));
  if (!same) {
    const named = tables.map((table) => table.qualified).join(', ');
    throw new PgTideError(
      'CONSUMER_TABLE_MISMATCH',
      `consumer ${JSON.stringify(name)} follows other tables, not ${named}; consumer names are unique`,
      { consumer: name, table: named },
    );
  }
  if (stored.expiredAt) throw expiredError(name, stored.expiredAt);
  const { rows } = await pool.query<{ era: number | null }>(`SELECT max(era) AS era FROM ${schema.ident}.eras`);
  const known = rows[0]?.era ?? 0;
  if (stored.position.era > known) {
    throw new PgTideError(
      'UNKNOWN_POSITION',
      `consumer ${JSON.stringify(name)} is at a position of era ${stored.position.era}, but this database knows eras up to ${known} ` +
        `(were ${schema.ident}.eras emptied, or the consumer copied from another database?); pgtide cannot tell what it covers. ` +
        `dropConsumer(${JSON.stringify(name)}) and start it again from where it should`,
      { consumer: name, era: stored.position.era, knownEras: known },
    );
  }
  return stored.position;
}
