import type { Pool, PoolClient } from 'pg';

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
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

/** SQLSTATE of a PostgreSQL error, if it is one. */
export function sqlState(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string'
    ? error.code
    : undefined;
}
