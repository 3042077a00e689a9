import type { ZodType } from 'zod';

/**
 * The kind of change a {@link Change} describes. `truncate`: the whole table was emptied
 * (TRUNCATE); such a change has no key and no rows, and every row before it is gone.
 */
export type Operation = 'insert' | 'update' | 'delete' | 'truncate';

/** A row as pgtide delivers it when no row schema is given: column name to JSON value. */
export type RowData = Record<string, unknown>;

/**
 * One committed change to one row of a watched table.
 *
 * @typeParam Row - the row type; `RowData` unless a `schema` was given to `changes$`.
 */
export interface Change<Row = RowData> {
  /** The change's log id (a bigint, as a string). Unique; stable across restarts. */
  readonly id: string;
  /** Id of the transaction that wrote the change (`xid8`, as a string). */
  readonly txid: string;
  /** Schema of the changed table. */
  readonly schema: string;
  /** Name of the changed table. */
  readonly table: string;
  /** What happened to the row. */
  readonly op: Operation;
  /** The row's primary key, column name to value (empty for `truncate`). */
  readonly key: Record<string, unknown>;
  /** The row after the change (insert, update). */
  readonly new?: Row;
  /** The row before the change (update, delete). */
  readonly old?: Row;
  /** Columns whose stored value differs; every column for insert and delete; none for truncate. */
  readonly changed: readonly string[];
  /**
   * When the writing statement ran (`clock_timestamp()` in the capture trigger).
   * PostgreSQL does not expose commit time without `track_commit_timestamp`; for a
   * short transaction this is within its duration of the commit.
   */
  readonly committedAt: Date;
}

/**
 * Where a stream without a durable cursor starts.
 * - `'now'`: every change that commits after the stream is caught up (see {@link StreamEvent}).
 * - `'beginning'`: everything still in the log.
 * - `{ after: id }`: the changes delivered after the change with this id.
 */
export type StartFrom =
  | 'now'
  | 'beginning'
  | {
      /** Id of a change of this table still in the log: the stream starts after it. */
      readonly after: string;
    };

/** Options of `tide.changes$()`. */
export interface ChangesOptions<Row = RowData> {
  /**
   * Emit inserts and deletes, and updates only when at least one of these columns
   * changed; `new`/`old` carry the key plus these columns.
   */
  readonly columns?: readonly string[];
  /** Only this row: its primary-key value, or an object of key columns for a composite key. */
  readonly rowId?: unknown;
  /**
   * One column of one row (needs `rowId`): emits when the row is inserted, when this
   * field changes, and when the row is deleted.
   */
  readonly field?: string;
  /** Where a stream without a durable cursor starts. Default `'now'`. */
  readonly from?: StartFrom;
  /**
   * Durable consumer name. The stream resumes after the consumer's acknowledged
   * position, and the log keeps every change the consumer has not acknowledged.
   * On first use the consumer starts at `from`.
   */
  readonly consumer?: string;
  /**
   * For a `consumer` stream: at most this many delivered changes may wait for
   * acknowledgement; the stream reads on when acknowledgements make room, so a slow
   * handler keeps memory bounded. Default 1000.
   */
  readonly maxInFlight?: number;
  /**
   * With `consumer`: this stream is one member of the consumer group of that name, and
   * every stream (in any process) with the same name and `group` shares the work. The
   * rows are split into `partitions` (default 16; fixed when the group is created):
   * each partition, so each row's changes, goes to one member at a time, in commit
   * order, and members acknowledge independently. Members that join or leave
   * rebalance; a member that ends hands its partitions over at once, one that dies
   * loses them within `leaseTimeout`. `events$` reports the member's share as
   * `{ kind: 'group' }` events. See the README's "Scaling out".
   */
  readonly group?:
    | boolean
    | {
        /** How many parts the rows are split into, 1 to 1024 (only counts when the group is created). Default 16. */
        readonly partitions?: number;
      };
  /** Validates and types `new`/`old`. A row that fails errors the stream with `INVALID_ROW`. */
  readonly schema?: ZodType<Row>;
}

/**
 * One committed transaction's changes to the tables a `transactions$` stream follows.
 *
 * @typeParam Row - the row type; `RowData` unless a `schema` was given.
 */
export interface Transaction<Row = RowData> {
  /** The transaction id (`pg_current_xact_id()::text` in the writer). */
  readonly txid: string;
  /** Its changes to the followed tables, in statement order. */
  readonly changes: ReadonlyArray<Change<Row>>;
  /** The followed tables it wrote, as given to `transactions$`, in the order given there. */
  readonly tables: readonly string[];
}

/** Options of `tide.transactions$()`. */
export interface TransactionsOptions<Row = RowData> {
  /** Where a stream without a durable cursor starts. Default `'now'`. */
  readonly from?: StartFrom;
  /**
   * Durable consumer name, following all the given tables: the stream resumes after the
   * last whole batch of transactions acknowledged, and the log keeps what it still needs.
   */
  readonly consumer?: string;
  /** Validates and types `new`/`old` of every change. */
  readonly schema?: ZodType<Row>;
}

/** Options of `tide.waitFor()`. */
export interface WaitForOptions {
  /** Milliseconds to wait before rejecting with `WAIT_TIMEOUT`. Default 10000. */
  readonly timeout?: number;
}

/** Options of `tide.watch()`. */
export interface WatchOptions {
  /**
   * Capture updates only when one of these columns changes. Watching a table again
   * widens the set (union over all watchers); omitting it captures every column.
   */
  readonly columns?: readonly string[];
}

/**
 * What a stream of `tide.events$()` emits: each change, and once the moment the
 * stream has delivered everything committed before it went live.
 */
export type StreamEvent<Row = RowData> =
  | {
      /** A change of the table. */
      readonly kind: 'change';
      /** The change itself, as `changes$` would emit it. */
      readonly change: Change<Row>;
    }
  | {
      /**
       * The stream has replayed its backlog and now follows the live log: every
       * change that commits from here on is delivered.
       */
      readonly kind: 'caught-up';
    }
  | {
      /**
       * Another stream (in this process or another) is this consumer's reader: this
       * one waits as a hot standby and takes over, resuming after the last saved
       * position, when that one ends or its process dies (within `leaseTimeout`).
       */
      readonly kind: 'standby';
      /** The consumer's name. */
      readonly consumer: string;
    }
  | GroupShare
  | SchemaChange;

/**
 * A consumer group member's share changed (see `ChangesOptions.group`): emitted by
 * `events$` when the member starts, and whenever partitions move to or from it.
 */
export interface GroupShare {
  /** Always `group`. */
  readonly kind: 'group';
  /** The group's name (the `consumer` option). */
  readonly consumer: string;
  /** This member's id (random per stream). */
  readonly member: string;
  /** The partitions this member holds now, ascending. */
  readonly holds: readonly number[];
  /** The group's partition count. */
  readonly partitions: number;
  /** Live members of the group, this one included, when the share was computed. */
  readonly members: number;
}

/**
 * A watched table's columns changed (added, dropped, renamed or retyped), in order with
 * the changes around it: changes after it carry the new columns. Emitted by `events$`
 * where pgtide follows DDL (installed by a superuser: event triggers).
 */
export interface SchemaChange {
  /** Always `schema`. */
  readonly kind: 'schema';
  /** Schema of the table. */
  readonly schema: string;
  /** Name of the table. */
  readonly table: string;
  /** Its columns now, in table order. */
  readonly columns: readonly string[];
}

/** An open or prepared transaction, as `tide.blockers()` reports it. */
export interface Blocker {
  /** `open`: a backend's transaction in progress; `prepared`: a prepared (two-phase) transaction. */
  readonly kind: 'open' | 'prepared';
  /** Backend process id (`pg_stat_activity.pid`); null for a prepared transaction. */
  readonly pid: number | null;
  /** Its transaction id. */
  readonly txid: string;
  /** The global transaction id given to PREPARE TRANSACTION; null for an open one. */
  readonly gid: string | null;
  /** The database it runs in (prepared transactions of other databases are listed too). */
  readonly database: string | null;
  /** Seconds since it started (open) or was prepared. */
  readonly ageSeconds: number;
  /** `pg_stat_activity.state`, e.g. `idle in transaction`; null for a prepared transaction. */
  readonly state: string | null;
  /** Its current or last statement. */
  readonly query: string | null;
  /** The `application_name` it connected with. */
  readonly applicationName: string | null;
  /**
   * What it holds back: its own changes (delivered when it commits, dropped if it rolls
   * back) and pruning; never other transactions' changes.
   */
  readonly holdsBack: string;
}

/** Where pgtide sends diagnostics. Compatible with `console` and most loggers. */
export interface Logger {
  /** Detail for debugging; pgtide's default logger drops it. */
  debug(message: string, meta?: Record<string, unknown>): void;
  /** Lifecycle news, such as LISTEN going up or down. */
  info(message: string, meta?: Record<string, unknown>): void;
  /** Trouble pgtide works around: a failed read being retried, a lagging consumer. */
  warn(message: string, meta?: Record<string, unknown>): void;
  /** Trouble pgtide cannot work around by itself. */
  error(message: string, meta?: Record<string, unknown>): void;
}

/** Something `tide.warnings$` reports (each is also logged as a warning). */
export type TideWarning = ConsumerExpiredWarning | ConsumerStalledWarning;

/** A consumer lagged more than `maxLag` changes and no longer holds the log. */
export interface ConsumerExpiredWarning {
  /** Always `consumer-expired`. */
  readonly kind: 'consumer-expired';
  /** The consumer's name. */
  readonly consumer: string;
  /** What happened, for people. */
  readonly message: string;
}

/**
 * A consumer's position has not moved for `stallTimeout` while changes delivered after
 * the one it waits for were processed (or its in-flight window is full): usually a
 * change that an operator dropped without marking it processed.
 */
export interface ConsumerStalledWarning {
  /** Always `consumer-stalled`. */
  readonly kind: 'consumer-stalled';
  /** The consumer's name. */
  readonly consumer: string;
  /** Id of the change (for transactions$, the txid) the position waits for. */
  readonly waitingFor: string;
  /** Since when it waits. */
  readonly since: Date;
  /** Delivered changes behind it, unacknowledged or not. */
  readonly behind: number;
  /** Of those, how many were processed already. */
  readonly processedBehind: number;
  /** What happened, the usual cause and the fix, for people. */
  readonly message: string;
}

/** Options of `tide.state$()`. */
export interface StateOptions<Row = RowData> {
  /** Only this row (see {@link ChangesOptions.rowId}). */
  readonly rowId?: unknown;
  /** Rows carry the key plus these columns; updates of other columns are ignored. */
  readonly columns?: readonly string[];
  /** Validates and types the rows. */
  readonly schema?: ZodType<Row>;
}

/**
 * What `tide.live$` emits: first the table's rows (`snapshot`, keyed by `stateKey`), then
 * each change after them, as `changes$` delivers it.
 */
export type LiveEvent<Row = RowData> =
  | {
      /** The table's rows, first. */
      readonly kind: 'snapshot';
      /** The rows at one snapshot, by `stateKey(change)` of their key. */
      readonly rows: ReadonlyMap<string, Row>;
    }
  | {
      /** A change after the snapshot. */
      readonly kind: 'change';
      /** The change, as `changes$` delivers it. */
      readonly change: Change<Row>;
    };

/**
 * What a stream is doing: `starting` (describing the table, registering its consumer),
 * `replaying` the backlog, `live` (caught up, on the table's shared feed), `standby`
 * (another stream reads for its consumer), or `reconnecting` (reads are failing and
 * retried, up to `reconnectTimeout`).
 */
export type StreamPhase = 'starting' | 'replaying' | 'live' | 'standby' | 'reconnecting';

/** One stream of a Tide in {@link TideStatus}. */
export interface StreamStatus {
  /** The table (`schema.name`), or the tables of a `transactions$` stream, comma-separated; empty while starting. */
  readonly table: string;
  /** Its durable consumer (a group partition's own name, `<group>/<n>`), if any. */
  readonly consumer?: string;
  /** What it is doing now. */
  readonly phase: StreamPhase;
}

/** What `tide.status$` reports: the LISTEN connection and every stream. */
export interface TideStatus {
  /** The LISTEN connection: `connecting` before it was first up, then `up` or `down`. */
  readonly listen: 'connecting' | 'up' | 'down';
  /** Every stream of the Tide (each consumer group partition too), in the order they started. */
  readonly streams: readonly StreamStatus[];
}

/** The timings a Tide runs with (see `ConnectOptions` for each). */
export interface TideSettings {
  /** Milliseconds after which a durable consumer's lease of a vanished reader lapses. */
  readonly leaseTimeout: number;
  /** Milliseconds a processed position may wait before it is saved. */
  readonly acknowledgeFlushDelay: number;
  /** Milliseconds reads may keep failing before streams fail with `CONNECTION_LOST`. */
  readonly reconnectTimeout: number;
  /** Milliseconds between looks for changes without a wake-up. */
  readonly pollInterval: number;
}
