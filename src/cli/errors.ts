import { PgTideError } from '../errors.js';

/** Exit codes of the `pgtide` command. */
export const EXIT = {
  /** Done. Also after Ctrl-C / SIGTERM stops `tail`. */
  ok: 0,
  /** The command ran and failed: server unreachable, unknown table, SQL error, ... */
  failed: 1,
  /** The command line is wrong: unknown command or option, bad value, no database given. */
  usage: 2,
} as const;

/** A wrong command line: reported in one line, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** A failure the CLI itself detects (not installed, no such consumer): one line, exit code 1. */
export class CliFailure extends Error {
  override readonly name = 'CliFailure';
}

/** Error codes of Node's socket layer that mean "no server there". */
const unreachableCodes = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ECONNRESET']);

/**
 * One line that tells the user what went wrong, without a stack trace: the CLI's own
 * errors as they are, `PgTideError` with its code, connection failures naming the
 * server (never the password), PostgreSQL errors with their SQLSTATE.
 */
export function describeError(error: unknown, server: string | undefined): string {
  if (error instanceof UsageError || error instanceof CliFailure) return error.message;
  if (error instanceof PgTideError) return `${error.message} [${error.code}]`;
  const code = errorCode(error);
  const message = oneLine(messageOf(error));
  if (code !== undefined && unreachableCodes.has(code)) {
    return `cannot reach PostgreSQL at ${server ?? 'the server'}: ${message || code}`;
  }
  if (/timeout|terminated unexpectedly/i.test(message) && !isDatabaseError(error)) {
    return `cannot reach PostgreSQL at ${server ?? 'the server'}: ${message}`;
  }
  if (isDatabaseError(error)) return `PostgreSQL: ${message} [SQLSTATE ${error.code}]`;
  return message || 'unexpected error';
}

/** `host:port/database` of a connection URI, for messages: never the password. */
export function describeServer(url: string): string {
  try {
    const parsed = new URL(url);
    const host = parsed.hostname || 'localhost';
    const database = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
    return `${host}:${parsed.port || '5432'}${database ? `/${database}` : ''}`;
  } catch {
    return 'the server';
  }
}

function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  if ('code' in error && typeof error.code === 'string') return error.code;
  // Node 20 tries every address of a host name and reports them together.
  if (error instanceof AggregateError) return errorCode(error.errors[0]);
  return undefined;
}

function isDatabaseError(error: unknown): error is Error & { code: string } {
  return (
    error instanceof Error &&
    'severity' in error &&
    'code' in error &&
    typeof error.code === 'string' &&
    /^[0-9A-Z]{5}$/.test(error.code)
  );
}

function messageOf(error: unknown): string {
  if (error instanceof AggregateError && !error.message) return error.errors.map(messageOf).join('; ');
  return error instanceof Error ? error.message : String(error);
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
