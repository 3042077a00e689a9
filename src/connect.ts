import pg from 'pg';
import { filter, map, type Observable } from 'rxjs';
import { unwatchTable, watchTable } from './capture.js';
import { assertColumns, describeTable, type TableInfo } from './catalog.js';
import { changeEvents, type StreamContext } from './changes.js';
import { PgTideError } from './errors.js';
import { Hub } from './hub.js';
import { Listener } from './listener.js';
import { LogReader, type Position } from './log.js';
import { migrate } from './migrate.js';
import {
  parseChangesOptions,
  parseConnectOptions,
  parseTableArgument,
  parseWatchOptions,
  type ConnectOptions,
} from './options.js';
import { resolveSchemaNames, type SchemaNames } from './sql.js';
import type { Blocker, Change, ChangesOptions, Logger, RowData, StreamEvent, WatchOptions } from './types.js';

const consoleLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message, meta) => console.warn(message, meta ?? ''),
  error: (message, meta) => console.error(message, meta ?? ''),
};

/**
 * Connects to PostgreSQL, installs or upgrades the SDK's schema, and opens the one
 * LISTEN connection this Tide shares between all its streams.
 *
 * @example
 * ```ts
 * const tide = await connect({ connectionString: process.env.DATABASE_URL });
 * tide.changes$('mail_users').subscribe((change) => console.log(change.op, change.key));
 * ```
 * @throws PgTideError `INVALID_OPTIONS` naming the bad field; `SCHEMA_TOO_NEW`.
 */
export async function connect(options: ConnectOptions): Promise<Tide> {
  const parsed = parseConnectOptions(options);
  const ownsPool = parsed.pool === undefined;
  const pool = parsed.pool ?? new pg.Pool({ connectionString: parsed.connectionString, application_name: 'pgtide' });
  if (ownsPool) {
    // An idle client's error is emitted on the pool; unheard, it would crash the process.
    const logger = parsed.logger ?? consoleLogger;
    pool.on('error', (error) => logger.warn('pgtide: idle database connection failed', { error: error.message }));
  }
  try {
    const schema = await resolveSchemaNames(pool, parsed.schema ?? 'pgtide');
    await migrate(pool, schema);
    const tide = new Tide(pool, ownsPool, schema, parsed);
    await tide.listen();
    return tide;
  } catch (error) {
    if (ownsPool) await pool.end().catch(() => undefined);
    throw error;
  }
}

/**
 * A connection to pgtide: change streams of any number of tables, sharing one LISTEN
 * connection and one reader per table. Create one per process with {@link connect}.
 */
export class Tide {
  /** The pool pgtide reads through (yours, if you passed one). */
  readonly pool: pg.Pool;
  /** The SDK's schema name. */
  readonly schema: string;
  private readonly names: SchemaNames;
  private readonly logger: Logger;
  private readonly reader: LogReader;
  private readonly hub: Hub;
  private readonly listener: Listener;
  private readonly streams = new Set<() => void>();
  private readonly prepared = new Map<string, Promise<TableInfo>>();
  private readonly pageSize: number;
  private closed = false;

  /** @internal Use {@link connect}. */
  constructor(
    pool: pg.Pool,
    private readonly ownsPool: boolean,
    names: SchemaNames,
    options: ConnectOptions,
  ) {
    this.pool = pool;
    this.names = names;
    this.schema = names.name;
    this.logger = options.logger ?? consoleLogger;
    this.pageSize = options.pageSize ?? 1000;
    this.reader = new LogReader(pool, names);
    this.hub = new Hub({
      reader: this.reader,
      logger: this.logger,
      pageSize: this.pageSize,
      pollInterval: options.pollInterval ?? 1000,
    });
    this.listener = new Listener(pool.options, names.name, {
      nudge: (relid) => this.hub.nudge(relid),
      nudgeAll: () => this.hub.nudgeAll(),
      status: (listening) => this.logger.info(`pgtide: LISTEN ${listening ? 'up' : 'down'}`),
    }, this.logger);
  }

  /** @internal */
  async listen(): Promise<void> {
    await this.listener.start();
  }

  /**
   * Changes to a table as an Observable: first the backlog from the start position
   * (`from` or the consumer's cursor), then live changes, with no gap and no duplicate.
   * Per row, changes arrive in commit order. Capture is installed on first use.
   *
   * @example
   * ```ts
   * tide.changes$('mail_users', { columns: ['quota_bytes'] })
   *   .subscribe((c) => console.log(c.op, c.key, c.old?.quota_bytes, '->', c.new?.quota_bytes));
   * ```
   * @param table - `'name'`, `'schema.name'`, or quoted SQL identifiers.
   * @throws PgTideError `INVALID_OPTIONS` at once; `UNKNOWN_TABLE`, `UNKNOWN_COLUMN`,
   *   `NO_PRIMARY_KEY` and `UNKNOWN_POSITION` as the stream's error, before anything is installed.
   */
  changes$<Row = RowData>(table: string, options: ChangesOptions<Row> = {}): Observable<Change<Row>> {
    return this.events$(table, options).pipe(
      filter((event): event is Extract<StreamEvent<Row>, { kind: 'change' }> => event.kind === 'change'),
      map((event) => event.change),
    );
  }

  /**
   * Like {@link Tide.changes$}, plus a `caught-up` event once the stream has delivered
   * its backlog and follows the live log: from that moment every change that commits
   * is delivered.
   *
   * @example
   * ```ts
   * tide.events$('mail_users').subscribe((e) => {
   *   if (e.kind === 'caught-up') startAcceptingRequests();
   *   else apply(e.change);
   * });
   * ```
   */
  events$<Row = RowData>(table: string, options: ChangesOptions<Row> = {}): Observable<StreamEvent<Row>> {
    this.assertOpen();
    const name = parseTableArgument(table);
    const parsed = parseChangesOptions<Row>(options);
    return changeEvents(this.streamContext(), name, parsed);
  }

  /**
   * Installs capture for a table without subscribing (`changes$` does this lazily).
   * Watching again with other columns widens the captured set.
   *
   * @example
   * ```ts
   * await tide.watch('mail_users', { columns: ['quota_bytes'] });
   * ```
   * @throws PgTideError `UNKNOWN_TABLE`, `UNKNOWN_COLUMN`, `NO_PRIMARY_KEY`, `INVALID_OPTIONS`.
   */
  async watch(table: string, options: WatchOptions = {}): Promise<void> {
    this.assertOpen();
    const parsed = parseWatchOptions(options);
    await watchTable(this.pool, this.names, parseTableArgument(table), parsed.columns);
    this.prepared.clear();
  }

  /**
   * Removes capture from a table. Its changes already in the log stay until pruned.
   *
   * @returns whether the table was watched.
   */
  async unwatch(table: string): Promise<boolean> {
    this.assertOpen();
    const removed = await unwatchTable(this.pool, this.names, parseTableArgument(table));
    this.prepared.clear();
    return removed;
  }

  /**
   * Backends with an open writing transaction, oldest first. Changes are delivered once
   * every transaction older than them has ended, so the first of these is what holds
   * delivery back when changes seem late.
   */
  async blockers(): Promise<Blocker[]> {
    const { rows } = await this.pool.query<{
      pid: number;
      txid: string;
      age: number;
      state: string | null;
      query: string | null;
      application_name: string | null;
    }>(
      `SELECT pid, backend_xid::text AS txid, extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age,
              state, query, application_name
         FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
        ORDER BY xact_start`,
    );
    return rows.map((row) => ({
      pid: row.pid,
      txid: row.txid,
      ageSeconds: row.age,
      state: row.state,
      query: row.query,
      applicationName: row.application_name,
    }));
  }

  /**
   * Ends the LISTEN connection and every stream (each subscriber gets `complete`), and
   * ends the pool if pgtide created it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const complete of [...this.streams]) complete();
    this.hub.stop();
    await this.listener.close();
    if (this.ownsPool) await this.pool.end();
  }

  private assertOpen(): void {
    if (this.closed) throw new PgTideError('CLOSED', 'this Tide is closed');
  }

  private streamContext(): StreamContext {
    return {
      reader: this.reader,
      hub: this.hub,
      logger: this.logger,
      pageSize: this.pageSize,
      closed: () => this.closed,
      prepare: (table, columns, check) => this.prepare(table, columns, check),
      consumerPosition: (name, table, start) => this.consumerPosition(name, table, start),
      track: (complete) => {
        this.streams.add(complete);
        return () => this.streams.delete(complete);
      },
    };
  }

  private async prepare(
    table: string,
    columns: readonly string[] | undefined,
    check: (info: TableInfo) => void,
  ): Promise<TableInfo> {
    const cacheKey = JSON.stringify([table, columns ?? null]);
    let prepared = this.prepared.get(cacheKey);
    if (!prepared) {
      prepared = describeTable(this.pool, table);
      this.prepared.set(cacheKey, prepared);
    }
    try {
      const info = await prepared;
      check(info);
      if (columns) assertColumns(info, columns, 'columns');
      await this.ensureWatched(info, columns);
      return info;
    } catch (error) {
      this.prepared.delete(cacheKey);
      throw error;
    }
  }

  /** Watches the table unless it already captures what these columns need. */
  private async ensureWatched(info: TableInfo, columns: readonly string[] | undefined): Promise<void> {
    const { rows } = await this.pool.query<{ columns: string[] | null }>(
      `SELECT columns FROM ${this.names.ident}.watched WHERE relid = $1`,
      [info.relid],
    );
    const current = rows[0];
    const covered =
      current !== undefined &&
      (current.columns === null || (columns !== undefined && columns.every((column) => current.columns!.includes(column))));
    if (!covered) await watchTable(this.pool, this.names, info.qualified, columns);
  }

  private async consumerPosition(name: string, table: TableInfo, start: () => Promise<Position>): Promise<Position> {
    const select = async () => {
      const { rows } = await this.pool.query<{ relid: string; pos: string; id: string }>(
        `SELECT relid::int8 AS relid, pos::text, id::text FROM ${this.names.ident}.consumers WHERE name = $1`,
        [name],
      );
      const row = rows[0];
      if (!row) return undefined;
      if (Number(row.relid) !== table.relid) {
        throw new PgTideError(
          'CONSUMER_TABLE_MISMATCH',
          `consumer ${JSON.stringify(name)} follows another table, not ${table.qualified}; consumer names are unique`,
          { consumer: name, table: table.qualified },
        );
      }
      return { pos: BigInt(row.pos), id: BigInt(row.id) };
    };
    const existing = await select();
    if (existing) return existing;
    const position = await start();
    await this.pool.query(
      `INSERT INTO ${this.names.ident}.consumers (name, relid, pos, id) VALUES ($1, $2, $3, $4)
       ON CONFLICT (name) DO NOTHING`,
      [name, table.relid, position.pos.toString(), position.id.toString()],
    );
    return (await select())!;
  }
}
