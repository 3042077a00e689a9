import type { Pool } from 'pg';
import { z } from 'zod';
import { PgTideError } from './errors.js';
import type { ChangesOptions, Logger, StateOptions, TransactionsOptions, WaitForOptions, WatchOptions } from './types.js';

/** Options of {@link connect}. */
export interface ConnectOptions {
  /** A PostgreSQL connection URI. Give this or `pool`. */
  readonly connectionString?: string;
  /** A `pg.Pool` the application already has. pgtide never ends it. Give this or `connectionString`. */
  readonly pool?: Pool;
  /** Name of the SDK's own schema (log, registry, capture function). Default `pgtide`. */
  readonly schema?: string;
  /** Where diagnostics go. Default: warnings and errors to `console`. */
  readonly logger?: Logger;
  /** Rows per log query, for replay and live reads. Default 1000. */
  readonly pageSize?: number;
  /**
   * Milliseconds between looks at the log when no NOTIFY arrives (one query for every
   * idle table of this Tide together): the bound on delay if a notification is missed,
   * LISTEN is down, or a transaction was prepared. Default 1000.
   */
  readonly pollInterval?: number;
  /**
   * Milliseconds a durable consumer's processed position may wait before it is
   * written (cursor writes are batched; they are also written on unsubscribe and
   * close). Default 100.
   */
  readonly acknowledgeFlushDelay?: number;
  /**
   * How long (ms) streams keep retrying while the database is unreachable before they
   * fail with `CONNECTION_LOST`. Default 60000.
   */
  readonly reconnectTimeout?: number;
  /** Milliseconds between background prunes; 0 turns them off. Default 60000. */
  readonly pruneInterval?: number;
  /**
   * How long (ms) changes of tables that no durable consumer follows stay in the log.
   * Default 24 hours.
   */
  readonly retention?: number;
  /**
   * A consumer more than this many changes behind is expired by prune: it stops
   * holding back the log and a warning is emitted. Default 10,000,000.
   */
  readonly maxLag?: number;
  /**
   * Milliseconds a durable consumer's position may stand still while changes delivered
   * after the one it waits for were processed (or its in-flight window is full), before
   * `warnings$` and the logger report `consumer-stalled`. 0 turns the report off.
   * Default 30000.
   */
  readonly stallTimeout?: number;
  /**
   * Bound (ms) on how long a consumer's reader that vanished without closing its
   * connection (machine or network gone) keeps the consumer from its standbys: the
   * server's TCP keepalive on the lease connection gives up on it within this. A reader
   * that exits or is killed lets go at once. Default 10000.
   */
  readonly leaseTimeout?: number;
}

const nonEmpty = z.string().min(1, 'must not be empty');
/** Text PostgreSQL can store: no NUL byte. */
const storable = nonEmpty.refine((text) => !text.includes('\0'), 'must not contain a NUL byte');
/**
 * The SDK's schema name. PostgreSQL reserves `pg_*`, and pgtide derives trigger names
 * from it (`<schema>_capture_truncate`, `<schema>_follow_alter`) within 63 bytes.
 */
const schemaName = storable
  .refine((name) => !name.startsWith('pg_'), 'must not start with pg_ (reserved by PostgreSQL)')
  .refine((name) => Buffer.byteLength(name) <= 40, 'must be at most 40 bytes (trigger names derive from it)');
const isPool = (value: unknown): value is Pool =>
  typeof value === 'object' &&
  value !== null &&
  typeof (value as Record<string, unknown>)['connect'] === 'function' &&
  typeof (value as Record<string, unknown>)['query'] === 'function' &&
  typeof (value as Record<string, unknown>)['options'] === 'object';
const isLogger = (value: unknown): value is Logger =>
  typeof value === 'object' &&
  value !== null &&
  ['debug', 'info', 'warn', 'error'].every((level) => typeof (value as Record<string, unknown>)[level] === 'function');

const connectSchema = z
  .strictObject({
    connectionString: nonEmpty.optional(),
    pool: z.custom<Pool>(isPool, 'must be a pg.Pool').optional(),
    schema: schemaName.optional(),
    logger: z.custom<Logger>(isLogger, 'must have debug, info, warn and error methods').optional(),
    pageSize: z.number().int().min(1).max(100_000).optional(),
    pollInterval: z.number().int().min(10).optional(),
    acknowledgeFlushDelay: z.number().int().min(0).optional(),
    pruneInterval: z.number().int().min(0).optional(),
    reconnectTimeout: z.number().int().min(0).optional(),
    retention: z.number().int().min(0).optional(),
    maxLag: z.number().int().min(1).optional(),
    stallTimeout: z.number().int().min(0).optional(),
    leaseTimeout: z.number().int().min(1000).optional(),
  })
  .refine((options) => (options.connectionString === undefined) !== (options.pool === undefined), {
    message: 'give exactly one of connectionString and pool',
    path: ['connectionString'],
  });

const startFromSchema = z.union([
  z.literal('now'),
  z.literal('beginning'),
  z.strictObject({
    after: z
      .string()
      .regex(/^[1-9][0-9]{0,18}$/, 'must be a change id')
      // Compared as digits: the refinement also runs on strings the regex refused.
      .refine((id) => id.length < 19 || (id.length === 19 && id <= '9223372036854775807'), 'must be a change id (a bigint)'),
  }),
]);

// Fields shared by the stream-shaped options (changes$, events$, state$, watch).
const columnsOption = z.array(nonEmpty).min(1, 'must name at least one column').optional();
const rowSchemaOption = z
  .custom<z.ZodType>((value) => typeof value === 'object' && value !== null && 'parse' in value, 'must be a zod schema')
  .optional();
const rowIdOption = z.unknown().refine((rowId) => rowId !== null, 'must not be null').optional();

const changesSchema = z
  .strictObject({
    columns: columnsOption,
    rowId: rowIdOption,
    field: nonEmpty.optional(),
    from: startFromSchema.optional(),
    consumer: storable.max(200).optional(),
    maxInFlight: z.number().int().min(1).optional(),
    group: z.union([z.boolean(), z.strictObject({ partitions: z.number().int().min(1).max(1024).optional() })]).optional(),
    schema: rowSchemaOption,
  })
  .refine((options) => !options.group || options.consumer !== undefined, {
    message: 'group needs consumer (the group is named by it)',
    path: ['group'],
  })
  .refine((options) => !options.group || options.rowId === undefined, {
    message: 'group cannot be combined with rowId (one row belongs to one member anyway)',
    path: ['group'],
  })
  .refine((options) => options.field === undefined || options.rowId !== undefined, {
    message: 'field needs rowId',
    path: ['field'],
  })
  .refine((options) => options.maxInFlight === undefined || options.consumer !== undefined, {
    message: 'maxInFlight needs consumer (only durable consumers acknowledge)',
    path: ['maxInFlight'],
  });

const transactionsSchema = z.strictObject({
  from: startFromSchema.optional(),
  consumer: storable.max(200).optional(),
  schema: rowSchemaOption,
});

const waitForSchema = z.strictObject({ timeout: z.number().int().min(0).optional() });

const txidSchema = z
  .string()
  .regex(/^[1-9][0-9]{0,19}$/, 'must be a transaction id, as pg_current_xact_id()::text returns it');

const stateSchema = z.strictObject({ rowId: rowIdOption, columns: columnsOption, schema: rowSchemaOption });

const watchSchema = z.strictObject({ columns: columnsOption });

/** Validates with zod and turns the first problem into an `INVALID_OPTIONS` error naming the field. */
function parseOptions<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value ?? {});
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({
    path: issue.path.join('.'),
    message: issue.message,
  }));
  const summary = issues.map((issue) => (issue.path ? `${issue.path}: ${issue.message}` : issue.message)).join('; ');
  throw new PgTideError('INVALID_OPTIONS', `invalid ${what} options: ${summary}`, { issues }, { cause: result.error });
}

export function parseConnectOptions(value: unknown): ConnectOptions {
  return parseOptions(connectSchema, value, 'connect') as ConnectOptions;
}

export function parseChangesOptions<Row>(value: unknown): ChangesOptions<Row> {
  return parseOptions(changesSchema, value, 'changes$') as ChangesOptions<Row>;
}

export function parseTransactionsOptions<Row>(value: unknown): TransactionsOptions<Row> {
  return parseOptions(transactionsSchema, value, 'transactions$') as TransactionsOptions<Row>;
}

export function parseWaitFor(txid: unknown, options: unknown): { txid: string; options: WaitForOptions } {
  const parsed = txidSchema.safeParse(txid);
  if (!parsed.success) {
    throw new PgTideError('INVALID_OPTIONS', `waitFor: txid ${describeValue(txid)} ${parsed.error.issues[0]!.message}`, {
      issues: [{ path: 'txid', message: parsed.error.issues[0]!.message }],
    });
  }
  return { txid: parsed.data, options: parseOptions(waitForSchema, options, 'waitFor') };
}

/** The table arguments of transactions$: a non-empty array of table names, no repeats. */
export function parseTableList(tables: unknown): string[] {
  if (!Array.isArray(tables) || tables.length === 0) {
    throw new PgTideError('INVALID_TABLE_NAME', `tables must be a non-empty array of table names, got ${describeValue(tables)}`, {
      table: tables,
    });
  }
  const names = tables.map(parseTableArgument);
  if (new Set(names).size !== names.length) {
    throw new PgTideError('INVALID_OPTIONS', `tables: ${describeValue(tables)} names a table twice`, {
      issues: [{ path: 'tables', message: 'names a table twice' }],
    });
  }
  return names;
}

export function parseStateOptions<Row>(value: unknown): StateOptions<Row> {
  return parseOptions(stateSchema, value, 'state$') as StateOptions<Row>;
}

export function parseWatchOptions(value: unknown): WatchOptions {
  return parseOptions(watchSchema, value, 'watch');
}

const consumerNameSchema = storable.max(200);
const idsSchema = z.array(z.string().regex(/^[1-9][0-9]{0,18}$/, 'must be an id as pgtide returns it'));

/** A consumer (or group) name given to a method. */
export function parseConsumerName(name: unknown): string {
  return parseOptions(z.strictObject({ consumer: consumerNameSchema }), { consumer: name }, 'consumer').consumer;
}

/** Ids of dead letters (strings, as `deadLetters()` gives them). */
export function parseIds(ids: unknown): string[] {
  return parseOptions(z.strictObject({ ids: idsSchema }), { ids }, 'ids').ids;
}

export function parseTableArgument(table: unknown): string {
  if (typeof table !== 'string' || table.length === 0) {
    throw new PgTideError('INVALID_TABLE_NAME', `table must be a non-empty string, got ${describeValue(table)}`, {
      table,
    });
  }
  return table;
}

/** A short description of any value for a message (JSON.stringify throws on bigint). */
function describeValue(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return typeof value === 'bigint' ? `${value}n` : Object.prototype.toString.call(value);
  }
}
