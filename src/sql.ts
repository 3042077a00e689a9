import type { Pool, PoolClient } from 'pg';
import { PgTideError } from './errors.js';

/** Identifier forms of the SDK's schema, quoted by the server (`format('%I')`), never by hand. */
export interface SchemaNames {
  /** The raw schema name; also the NOTIFY channel. */
  readonly name: string;
  /** The quoted identifier, for SQL text. */
  readonly ident: string;
  /** The schema name as a string literal. */
  readonly literal: string;
  /** The quoted identifier as a string literal (for format('%s') inside functions). */
  readonly identLiteral: string;
}

export async function resolveSchemaNames(pool: Pool, name: string): Promise<SchemaNames> {
  const { rows } = await pool.query<{ ident: string; literal: string; ident_literal: string }>(
    `SELECT format('%I', $1::text) AS ident, quote_literal($1::text) AS literal,
            quote_literal(format('%I', $1::text)) AS ident_literal`,
    [name],
  );
  const row = rows[0]!;
  return { name, ident: row.ident, literal: row.literal, identLiteral: row.ident_literal };
}

/** Runs `work` in one transaction on one pooled client. */
export async function inTransaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  // A checked-out client whose backend is terminated between two statements emits
  // 'error' with nobody listening (the pool listens only to idle ones): the next query
  // fails instead, and the client is released as broken.
  let broken: Error | undefined;
  const onError = (error: Error) => (broken = error);
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}

/** SQLSTATE of a PostgreSQL error, if it is one. */
export function sqlState(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string'
    ? error.code
    : undefined;
}

const networkErrors = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'ETIMEDOUT', 'EHOSTUNREACH', 'EPIPE', 'EAI_AGAIN']);

/**
 * Whether an error means "the database is not reachable right now" (network trouble,
 * a server shutting down or restarting, no connection slots): worth retrying.
 */
export function isTransient(error: unknown): boolean {
  const code = sqlState(error);
  if (code && networkErrors.has(code)) return true;
  if (code && (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300')) {
    return true;
  }
  const message = error instanceof Error ? error.message : '';
  return /Connection terminated|connection timeout|Client has encountered a connection error|not queryable/i.test(message);
}

/**
 * The typed error for a database error a user can act on (unreachable server, failed
 * authentication, missing privilege), or undefined for anything else.
 */
export function classifyDatabaseError(error: unknown, what: string): PgTideError | undefined {
  if (error instanceof PgTideError) return error;
  const code = sqlState(error);
  const message = error instanceof Error ? error.message : String(error);
  if (code === '28P01' || code === '28000') {
    return new PgTideError('AUTHENTICATION_FAILED', `${what}: authentication failed: ${message}`, { sqlState: code }, { cause: error });
  }
  if (code === '42501') {
    return new PgTideError(
      'PERMISSION_DENIED',
      `${what}: permission denied: ${message} (see "Roles and grants" in the README)`,
      { sqlState: code },
      { cause: error },
    );
  }
  if (code === 'ERR_INVALID_URL') {
    return new PgTideError('INVALID_OPTIONS', `${what}: connectionString is not a valid URL: ${message}`, {}, { cause: error });
  }
  if (code?.startsWith('22')) {
    // A data exception: a value pgtide passed on (a rowId, a name) that PostgreSQL cannot take.
    return new PgTideError('INVALID_OPTIONS', `${what}: PostgreSQL cannot take this value: ${message}`, { sqlState: code }, { cause: error });
  }
  if (code === '3D000' || isTransient(error)) {
    return new PgTideError('CONNECTION_FAILED', `${what}: cannot reach the database: ${message}`, { sqlState: code }, { cause: error });
  }
  return undefined;
}
