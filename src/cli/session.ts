import pg from 'pg';
import { resolveSchemaNames } from '../sql.js';
import { connect, type Tide } from '../connect.js';
import type { ConnectOptions } from '../options.js';
import type { Logger } from '../types.js';
import { CliFailure, describeServer, UsageError } from './errors.js';

/** Options every command takes. */
export interface GlobalOptions {
  readonly url?: string;
  readonly schema: string;
}

/** A connected Tide on a pool the CLI owns, plus what commands need for their own queries. */
export interface Session {
  readonly tide: Tide;
  readonly pool: pg.Pool;
  /** `host:port/database`, for messages. */
  readonly server: string;
  /** The SDK's schema as a quoted identifier, for SQL text. */
  readonly schemaIdent: string;
  /** Closes the Tide (saving consumers' positions), then the pool. */
  close(): Promise<void>;
}

/** How long to wait for the server before saying it cannot be reached. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Warnings and errors go to stderr, one line each; debug and info are dropped. */
export const cliLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message) => process.stderr.write(`pgtide: warning: ${message.replace(/^pgtide: /, '')}\n`),
  error: (message) => process.stderr.write(`pgtide: error: ${message.replace(/^pgtide: /, '')}\n`),
};

/** `--url`, else `DATABASE_URL`; a usage error when neither is given or it is not a URI. */
export function databaseUrl(options: GlobalOptions): string {
  const url = options.url ?? process.env.DATABASE_URL;
  if (url === undefined || url === '') {
    throw new UsageError('no database given: pass --url postgres://user:password@host:port/database or set DATABASE_URL');
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError('invalid database URL: expected postgres://user:password@host:port/database');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new UsageError(`invalid database URL: the scheme must be postgres:// or postgresql://, not ${parsed.protocol}//`);
  }
  return url;
}

/** Parameters the CLI's Tide gets beyond the connection: it is an observer, it never prunes on its own. */
export type SessionOptions = Omit<ConnectOptions, 'connectionString' | 'pool' | 'schema' | 'logger'>;

/**
 * Connects. `install: false` refuses, rather than installs, a database without the SDK's
 * schema: `status`, `prune` and the like should not change a database they only inspect.
 */
export async function openSession(
  options: GlobalOptions,
  { install, tide: tideOptions = {} }: { install: boolean; tide?: SessionOptions },
): Promise<Session> {
  const url = databaseUrl(options);
  const server = describeServer(url);
  const pool = new pg.Pool({
    connectionString: url,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    max: 4,
    application_name: 'pgtide-cli',
  });
  // An idle client's error is emitted on the pool; unheard, it would crash the process.
  pool.on('error', (error) => cliLogger.warn(`database connection lost: ${error.message}`));
  try {
    if (!install) await assertInstalled(pool, options.schema, server);
    const tide = await connect({ pool, schema: options.schema, logger: cliLogger, pruneInterval: 0, ...tideOptions });
    return {
      tide,
      pool,
      server,
      // Quoted by the server, like every identifier pgtide sends.
      schemaIdent: (await resolveSchemaNames(pool, options.schema)).ident,
      async close() {
        await tide.close();
        await pool.end();
      },
    };
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw error;
  }
}

async function assertInstalled(pool: pg.Pool, schema: string, server: string): Promise<void> {
  const { rows } = await pool.query<{ installed: boolean }>(
    `SELECT to_regclass(format('%I.migrations', $1::text)) IS NOT NULL AS installed`,
    [schema],
  );
  if (!rows[0]?.installed) {
    throw new CliFailure(`pgtide is not installed in ${server} (no schema ${JSON.stringify(schema)}): run \`pgtide install\` first`);
  }
}
