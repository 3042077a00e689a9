import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { firstValueFrom, filter, type Observable, type Subscription } from 'rxjs';
import { inject } from 'vitest';
import { connect, type ConnectOptions, type Tide } from '../src/index.js';
import type { Change, StreamEvent } from '../src/types.js';

/** A fresh database on the test server, so test files never see each other's tables or logs. */
export interface TestDatabase {
  readonly url: string;
  readonly pool: pg.Pool;
  /** Connects a Tide to this database; closed by `drop()`. */
  tide(options?: Omit<ConnectOptions, 'connectionString' | 'pool'>): Promise<Tide>;
  drop(): Promise<void>;
}

export function urlWithDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export async function createTestDatabase(serverUrl = inject('databaseUrl')): Promise<TestDatabase> {
  const name = `pgtide_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = urlWithDatabase(serverUrl, name);
  const pool = new pg.Pool({ connectionString: url, max: 20 });
  // pool.end() resolves before its connections are closed: DROP ... WITH (FORCE) may
  // terminate one still closing, which must not become an uncaught error.
  pool.on('error', () => undefined);
  const tides: Tide[] = [];
  return {
    url,
    pool,
    async tide(options = {}) {
      const tide = await connect({ connectionString: url, logger: quietLogger, ...options });
      tides.push(tide);
      return tide;
    },
    async drop() {
      await Promise.all(tides.map((tide) => tide.close()));
      await pool.end();
      const admin = new pg.Client({ connectionString: serverUrl });
      await admin.connect();
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.end();
    },
  };
}

/** Logs warnings and errors only, tagged, so a failing test shows what pgtide saw. */
export const quietLogger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message: string, meta?: Record<string, unknown>) => console.warn('[pgtide]', message, meta ?? ''),
  error: (message: string, meta?: Record<string, unknown>) => console.error('[pgtide]', message, meta ?? ''),
};

/** Resolves once the event stream reports it has caught up with the live log. */
export function caughtUp<Row>(events: Observable<StreamEvent<Row>>): Promise<unknown> {
  return firstValueFrom(events.pipe(filter((event) => event.kind === 'caught-up')));
}

/** Polls `check` until it returns true, or fails after `timeout` ms with `what`. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, timeout = 10_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A subscription to `tide.events$` that records everything it receives. */
export interface Followed<Row> {
  readonly changes: import('../src/types.js').Change<Row>[];
  /** Resolves when the stream is caught up; rejects if it errors first. */
  readonly ready: Promise<void>;
  readonly state: { error?: unknown; completed: boolean };
  unsubscribe(): void;
}

export function follow<Row = Record<string, unknown>>(
  tide: Tide,
  table: string,
  options: import('../src/types.js').ChangesOptions<Row> = {},
): Followed<Row> {
  const changes: import('../src/types.js').Change<Row>[] = [];
  const state: { error?: unknown; completed: boolean } = { completed: false };
  let markReady!: () => void;
  let markFailed!: (error: unknown) => void;
  const ready = new Promise<void>((resolve, reject) => {
    markReady = resolve;
    markFailed = reject;
  });
  const subscription = tide.events$<Row>(table, options).subscribe({
    next: (event) => (event.kind === 'change' ? changes.push(event.change) : markReady()),
    error: (error: unknown) => {
      state.error = error;
      markFailed(error);
    },
    complete: () => (state.completed = true),
  });
  return { changes, ready, state, unsubscribe: () => subscription.unsubscribe() };
}

/** A stream's events as they come: its changes, and a promise of its first caught-up. */
export interface FollowedEvents {
  readonly changes: Change[];
  readonly caughtUp: Promise<void>;
  readonly subscription: Subscription;
}

/** Subscribes `events`, collecting its changes (errors are printed, not thrown). */
export function followEvents(events: Observable<StreamEvent<unknown>>): FollowedEvents {
  const changes: Change[] = [];
  let resolve!: () => void;
  const caughtUp = new Promise<void>((done) => (resolve = done));
  const subscription = events.subscribe({
    next: (event) => {
      if (event.kind === 'change') changes.push(event.change as Change);
      else if (event.kind === 'caught-up') resolve();
    },
    error: (error: unknown) => console.error('stream error', error),
  });
  return { changes, caughtUp, subscription };
}

/** The `id` key column of each change. */
export const changeIds = (changes: readonly Change[]): number[] => changes.map((change) => change.key['id'] as number);

/**
 * A pool of its own on `url` whose every query is shown to `hook` first (its text and
 * values): the hook counts queries, or answers one (a rejected promise: a fault) instead
 * of the server by returning it; undefined lets the query through.
 */
export function poolWithQueryHook(url: string, hook: (text: string, values: readonly unknown[] | undefined) => Promise<never> | undefined): pg.Pool {
  const pool = new pg.Pool({ connectionString: url });
  pool.on('error', () => undefined);
  const query = pool.query.bind(pool) as (...args: unknown[]) => unknown;
  (pool as unknown as { query: (...args: unknown[]) => unknown }).query = (...args) => {
    const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text: string }).text;
    const values = (typeof args[0] === 'string' ? args[1] : (args[0] as { values?: unknown[] }).values ?? args[1]) as readonly unknown[] | undefined;
    return hook(text, values) ?? query(...args);
  };
  return pool;
}
