/** Stable codes of {@link PgTideError}; match on these, not on messages. */
export type PgTideErrorCode =
  | 'INVALID_OPTIONS'
  | 'INVALID_TABLE_NAME'
  | 'UNKNOWN_TABLE'
  | 'UNKNOWN_COLUMN'
  | 'NO_PRIMARY_KEY'
  | 'UNSUPPORTED_TABLE'
  | 'UNKNOWN_POSITION'
  | 'CONSUMER_TABLE_MISMATCH'
  | 'CONSUMER_GROUP_MISMATCH'
  | 'CONSUMER_EXPIRED'
  | 'CONSUMER_LEASE_LOST'
  | 'UNKNOWN_CONSUMER'
  | 'INVALID_ROW'
  | 'PROCESSING_FAILED'
  | 'SCHEMA_TOO_NEW'
  | 'CONNECTION_FAILED'
  | 'CONNECTION_LOST'
  | 'AUTHENTICATION_FAILED'
  | 'PERMISSION_DENIED'
  | 'WAIT_TIMEOUT'
  | 'TRANSACTION_ROLLED_BACK'
  | 'CLOSED'
  | 'INVALID_MESSAGE'
  | 'NATS_STREAM_MISMATCH'
  | 'FORBIDDEN';

/**
 * Every error pgtide raises on purpose. `code` is stable; `cause` holds the
 * underlying error (for example a PostgreSQL error) when there is one.
 *
 * @example
 * ```ts
 * try { await tide.watch('nope'); }
 * catch (e) { if (e instanceof PgTideError && e.code === 'UNKNOWN_TABLE') ... }
 * ```
 */
export class PgTideError extends Error {
  /** Always `PgTideError`. */
  override readonly name = 'PgTideError';
  /** Stable machine-readable code. */
  readonly code: PgTideErrorCode;
  /** Structured facts about the problem (the table, column, option path, ...). */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: PgTideErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.details = details;
  }
}

/** Raised on a row that fails the stream's zod `schema`; carries the change id. */
export class RowValidationError extends PgTideError {
  /** `PgTideError`, like its base class: match on `code` (`INVALID_ROW`). */
  override readonly name = 'PgTideError';
  /** Id of the change whose row failed validation. */
  readonly changeId: string;

  constructor(changeId: string, table: string, cause: unknown) {
    super('INVALID_ROW', `change ${changeId} of ${table} does not match the stream's schema`, { changeId, table }, { cause });
    this.changeId = changeId;
  }
}
