import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startPostgres } from '../../src/embedded.js';
import { connect, type Blocker, type Tide } from '../../src/index.js';
import { createTestDatabase, eventually, quietLogger, type TestDatabase } from '../helpers.js';

// A change is delivered when its own transaction commits, whatever else is open on the
// server, and the wake-up machinery (NOTIFY from one committer per table, a "pending"
// lock for the others, one poll query for all idle feeds) neither stalls nor busy-polls.
// Every case runs on the test server (embedded PostgreSQL 18, or DATABASE_URL) and on
// Debian's PostgreSQL 15. Latencies and query counts are printed, never asserted on:
// timing targets belong to the benchmarks. A wait of a few seconds stands for "before
// the next poll" only where the poll is 60 s away.

const pg15Bin = process.env.PGTIDE_PG15_BIN ?? '/usr/lib/postgresql/15/bin';

interface Server {
  readonly name: string;
  readonly available: boolean;
  /** A server URL (its `postgres` database) and how to stop it. */
  start(): Promise<{ url: string; stop(): Promise<void> }>;
}

const servers: Server[] = [
  {
    name: 'PostgreSQL 18 (test server)',
    available: true,
    start: async () => ({ url: inject('databaseUrl'), stop: async () => undefined }),
  },
  {
    name: 'PostgreSQL 15 (Debian)',
    available: existsSync(`${pg15Bin}/postgres`),
    start: async () => {
      const server = await startPostgres({ binDir: pg15Bin, settings: { fsync: 'off', max_prepared_transactions: 10 } });
      return { url: server.connectionString, stop: () => server.destroy() };
    },
  },
];

/** A poll so far away that only a wake-up (NOTIFY, or the pending re-read) can deliver in time. */
const noPoll = 60_000;
/** How long a change that is not stuck may take, in the cases where the poll is 60 s away. */
const promptly = 3_000;
/** pgtide's advisory lock keys (schema `pgtide`): the NOTIFY lock and the pending lock, per table oid. */
const notifyLockKey = `hashtext('pgtide')::int8 & 4294967295`;
const pendingLockKey = `hashtext('pgtide:pending')::int8 & 4294967295`;
/** Our own advisory locks (first key) that hold a test transaction inside its commit. */
const gateLock = 4242;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const ms = (value: number) => `${value.toFixed(1)} ms`;

/** A live stream that records when each change (by integer `id`) arrived. */
interface Recorded {
  readonly at: Map<number, number>;
  readonly ids: number[];
  readonly ready: Promise<void>;
  error?: unknown;
  unsubscribe(): void;
}

function record(tide: Tide, table: string): Recorded {
  let caughtUp!: () => void;
  let failed!: (error: unknown) => void;
  const recorded: Recorded = {
    at: new Map(),
    ids: [],
    ready: new Promise<void>((resolve, reject) => {
      caughtUp = resolve;
      failed = reject;
    }),
    unsubscribe: () => subscription.unsubscribe(),
  };
  const subscription = tide.events$(table).subscribe({
    next: (event) => {
      if (event.kind === 'caught-up') return caughtUp();
      if (event.kind !== 'change') return;
      const id = Number(event.change.key['id']);
      recorded.ids.push(id);
      recorded.at.set(id, performance.now());
    },
    error: (error: unknown) => {
      recorded.error = error;
      failed(error);
    },
  });
  return recorded;
}

async function arrive(recorded: Recorded, ids: number[], what: string, timeout = 10_000): Promise<void> {
  await eventually(() => {
    if (recorded.error) throw recorded.error;
    return ids.every((id) => recorded.at.has(id));
  }, what, timeout);
}

/**
 * A pg.Pool that counts every query a Tide runs through it: `pool.query` (pg-pool checks
 * a client out with a callback for those, not counted twice) and the queries on clients
 * it hands out through `connect()`.
 */
class CountingPool extends pg.Pool {
  total = 0;
  readonly byKind = new Map<string, number>();

  reset(): void {
    this.total = 0;
    this.byKind.clear();
  }

  /** Queries that read the change log: pages (`read_batch`) and the poll (`tables_with_news`). */
  get logQueries(): number {
    return (this.byKind.get('read_batch') ?? 0) + (this.byKind.get('tables_with_news') ?? 0);
  }

  summary(): string {
    return `${this.total} queries (${[...this.byKind].map(([kind, count]) => `${kind} ${count}`).join(', ') || 'none'})`;
  }

  note(query: unknown): void {
    const text = typeof query === 'string' ? query : ((query as { text?: string } | undefined)?.text ?? '');
    const kind = text.includes('read_batch') ? 'read_batch' : text.includes('tables_with_news') ? 'tables_with_news' : 'other';
    this.total += 1;
    this.byKind.set(kind, (this.byKind.get(kind) ?? 0) + 1);
  }

  override query(...args: any[]): any {
    this.note(args[0]);
    return (pg.Pool.prototype.query as (...a: any[]) => any).apply(this, args);
  }

  override connect(...args: any[]): any {
    const connect = pg.Pool.prototype.connect as (...a: any[]) => any;
    if (args.length > 0) return connect.apply(this, args);
    return (connect.call(this) as Promise<pg.PoolClient>).then((client) => {
      const query = client.query;
      const release = client.release;
      client.query = ((...queryArgs: any[]) => {
        this.note(queryArgs[0]);
        return (query as (...a: any[]) => any).apply(client, queryArgs);
      }) as typeof client.query;
      client.release = (error?: Error | boolean) => {
        client.query = query;
        client.release = release;
        return release.call(client, error);
      };
      return client;
    });
  }
}

for (const server of servers) {
  describe.runIf(server.available)(`visibility on ${server.name}`, () => {
    const tag = `[visibility ${server.name}]`;
    const gidPrefix = `pgtide_vis_${randomBytes(4).toString('hex')}`;
    let gids = 0;
    const nextGid = () => `${gidPrefix}_${(gids += 1)}`;
    const clients = new Set<pg.Client>();
    let stopServer: (() => Promise<void>) | undefined;
    let db: TestDatabase;
    let other: TestDatabase;
    let otherName: string;
    let twoPhase = false;

    /** A connection of our own (a writer, a blocker), ended in afterAll if not before. */
    async function open(url: string, applicationName: string): Promise<pg.Client & { pid: number }> {
      const client = new pg.Client({ connectionString: url, application_name: applicationName });
      client.on('error', () => undefined);
      await client.connect();
      clients.add(client);
      const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      return Object.assign(client, { pid: rows[0]!.pid });
    }

    async function close(client: pg.Client): Promise<void> {
      clients.delete(client);
      await client.end().catch(() => undefined);
    }

    /** Resolves once the backend waits on a lock (held inside a statement or its commit). */
    async function waitingOnLock(pid: number, what: string): Promise<void> {
      await eventually(async () => {
        const { rows } = await db.pool.query(`SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1`, [pid]);
        return rows[0]?.wait_event_type === 'Lock';
      }, what);
    }

    /** pgtide's NOTIFY and pending advisory locks held on one table, by whom. */
    async function wakeLocks(table: string): Promise<Array<{ pid: number; lock: string; mode: string }>> {
      const { rows } = await db.pool.query(
        `SELECT l.pid, CASE l.classid::int8 WHEN ${notifyLockKey} THEN 'notify' WHEN ${pendingLockKey} THEN 'pending' END AS lock, l.mode
           FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.objid = $1::regclass::oid
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid::int8 IN (${notifyLockKey}, ${pendingLockKey})`,
        [table],
      );
      return rows;
    }

    beforeAll(async () => {
      const started = await server.start();
      stopServer = started.stop;
      db = await createTestDatabase(started.url);
      other = await createTestDatabase(started.url);
      otherName = new URL(other.url).pathname.slice(1);
      await db.pool.query(`
        CREATE TABLE stall (id int PRIMARY KEY, origin text NOT NULL);
        CREATE TABLE noise (id serial PRIMARY KEY, v int NOT NULL);
        CREATE TABLE hot (id int PRIMARY KEY, writer int NOT NULL);
        CREATE TABLE relay (id int PRIMARY KEY, note text);
        CREATE TABLE tpc (id int PRIMARY KEY, note text);
        CREATE TABLE parent (id int PRIMARY KEY);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
        DO $$ BEGIN
          FOR i IN 0..19 LOOP EXECUTE format('CREATE TABLE feed_%s (id int PRIMARY KEY, v int)', i); END LOOP;
        END $$;
        -- A gate row holds its transaction inside COMMIT (after pgtide's wake-up trigger,
        -- which was queued first) until the test releases the advisory lock (${gateLock}, lock_key).
        CREATE TABLE gate (id serial PRIMARY KEY, lock_key int NOT NULL);
        CREATE FUNCTION gate_wait() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
          PERFORM pg_advisory_xact_lock_shared(${gateLock}, NEW.lock_key);
          RETURN NULL;
        END $f$;
        CREATE CONSTRAINT TRIGGER gate_wait AFTER INSERT ON gate DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW EXECUTE FUNCTION gate_wait();`);
      await other.pool.query(`CREATE TABLE elsewhere (id int PRIMARY KEY)`);
      const { rows } = await db.pool.query(`SELECT current_setting('server_version') AS version,
                                                   current_setting('max_prepared_transactions')::int AS prepared`);
      twoPhase = rows[0].prepared > 0;
      console.log(`${tag} server ${rows[0].version}, max_prepared_transactions ${rows[0].prepared}`);
    });

    afterAll(async () => {
      // A prepared transaction outlives its connection and would keep DROP DATABASE waiting.
      for (const database of [db, other]) {
        if (!database) continue;
        const { rows } = await database.pool.query<{ gid: string }>(
          `SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 AND database = current_database()`,
          [`${gidPrefix}%`],
        );
        for (const { gid } of rows) await database.pool.query(`ROLLBACK PREPARED '${gid}'`);
      }
      await Promise.all([...clients].map((client) => close(client)));
      await db?.drop();
      await other?.drop();
      await stopServer?.();
    });

    describe('1. no stall: a change is delivered once its own transaction commits', () => {
      let tide: Tide;
      let stall: Recorded;
      let nextId = 1;

      beforeAll(async () => {
        tide = await db.tide({ pollInterval: noPoll, pruneInterval: 0 });
        stall = record(tide, 'stall');
        await stall.ready;
      });
      afterAll(() => stall?.unsubscribe());

      /**
       * Commits a bystander change while the blocker is open and waits for it; returns the
       * blocker as `tide.blockers()` lists it at that moment (so it was still open).
       */
      async function deliveredWhileOpen(label: string, find: (blocker: Blocker) => boolean, timeout = 10_000): Promise<Blocker> {
        const id = 10_000 + (nextId += 1);
        const sent = performance.now();
        await db.pool.query(`INSERT INTO stall VALUES ($1, 'bystander')`, [id]);
        await arrive(stall, [id], `the bystander change committed beside ${label}`, timeout);
        const blocker = (await tide.blockers()).find(find);
        console.log(`${tag} beside ${label}: commit -> delivered ${ms(stall.at.get(id)! - sent)}`);
        expect(blocker, `${label} is still open when the bystander change is delivered`).toBeDefined();
        return blocker!;
      }

      it('beside a writing transaction idle in transaction in ANOTHER database of the server', async () => {
        const otherTide = await other.tide({ pollInterval: noPoll, pruneInterval: 0 });
        const elsewhere = record(otherTide, 'elsewhere');
        await elsewhere.ready;
        const blocker = await open(other.url, 'vis-other-db');
        await blocker.query('BEGIN');
        await blocker.query(`INSERT INTO elsewhere VALUES (1)`);
        const listed = await deliveredWhileOpen('an open writer in another database', (b) => b.pid === blocker.pid);
        expect(listed).toMatchObject({ kind: 'open', database: otherName, state: 'idle in transaction', applicationName: 'vis-other-db' });
        expect(elsewhere.at.has(1)).toBe(false);
        await blocker.query('COMMIT');
        await arrive(elsewhere, [1], "the other database's change, once committed");
        elsewhere.unsubscribe();
        await close(blocker);
      });

      it('beside a writing transaction idle in transaction in the same database', async () => {
        const blocker = await open(db.url, 'vis-same-db');
        await blocker.query('BEGIN');
        await blocker.query(`INSERT INTO stall VALUES (1, 'blocker')`);
        const listed = await deliveredWhileOpen('an open writer of the same table', (b) => b.pid === blocker.pid);
        expect(listed).toMatchObject({ kind: 'open', state: 'idle in transaction' });
        expect(stall.at.has(1)).toBe(false);
        const committing = performance.now();
        await blocker.query('COMMIT');
        await arrive(stall, [1], 'the open writer\u2019s own change, once committed');
        console.log(`${tag} the blocker's own change: commit -> delivered ${ms(stall.at.get(1)! - committing)}`);
        await close(blocker);
      });

      it('beside prepared transactions that wrote the watched table: the committed one arrives, the rolled-back one never', async (context) => {
        if (!twoPhase) {
          console.warn(`${tag} skipped: max_prepared_transactions is 0 on this server (DATABASE_URL?)`);
          context.skip('max_prepared_transactions is 0');
        }
        const [kept, dropped] = [nextGid(), nextGid()];
        for (const [gid, id] of [[kept, 2], [dropped, 3]] as const) {
          const writer = await open(db.url, 'vis-prepared');
          await writer.query('BEGIN');
          await writer.query(`INSERT INTO stall VALUES ($1, 'prepared')`, [id]);
          await writer.query(`PREPARE TRANSACTION '${gid}'`);
          await close(writer); // a prepared transaction belongs to no connection
        }
        const listed = await deliveredWhileOpen('two prepared transactions', (b) => b.gid === kept);
        expect(listed).toMatchObject({ kind: 'prepared', pid: null, gid: kept });
        expect(stall.at.has(2) || stall.at.has(3)).toBe(false);
        const committing = performance.now();
        await db.pool.query(`COMMIT PREPARED '${kept}'`);
        await arrive(stall, [2], 'the change of the transaction committed with COMMIT PREPARED');
        console.log(`${tag} COMMIT PREPARED -> delivered ${ms(stall.at.get(2)! - committing)} (pending re-read; no NOTIFY)`);
        await db.pool.query(`ROLLBACK PREPARED '${dropped}'`);
        // A later commit, read in full, is read past where the rolled-back change would be.
        await db.pool.query(`INSERT INTO stall VALUES (10000, 'after the rollback')`);
        await arrive(stall, [10000], 'a change committed after ROLLBACK PREPARED');
        expect(stall.ids).not.toContain(3);
      });

      it('beside a transaction in progress: it wrote, and a statement of it is still running', async () => {
        const holder = await open(db.url, 'vis-lock-holder');
        await holder.query(`SELECT pg_advisory_lock(${gateLock}, 100)`);
        const blocker = await open(db.url, 'vis-in-progress');
        await blocker.query('BEGIN');
        await blocker.query(`INSERT INTO stall VALUES (4, 'in progress')`);
        // A statement that runs until we let it: waiting for our lock (a pg_sleep that never ends early).
        const running = blocker.query(`SELECT pg_advisory_xact_lock(${gateLock}, 100)`);
        running.catch(() => undefined); // awaited below; only a failed test leaves it to afterAll
        await waitingOnLock(blocker.pid, 'the running statement');
        const listed = await deliveredWhileOpen('a transaction in progress', (b) => b.pid === blocker.pid);
        expect(listed).toMatchObject({ kind: 'open', state: 'active' });
        expect(listed.query).toContain('pg_advisory_xact_lock');
        expect(stall.at.has(4)).toBe(false);
        await holder.query(`SELECT pg_advisory_unlock(${gateLock}, 100)`);
        await running;
        await blocker.query('COMMIT');
        await arrive(stall, [4], 'the in-progress transaction\u2019s change, once committed');
        await close(blocker);
        await close(holder);
      });

      // wake_readers is a deferred trigger, so SET CONSTRAINTS ALL IMMEDIATE runs it
      // mid-transaction: it must not take the NOTIFY lock then (it would keep it, idle,
      // and every other committer of the table would leave the NOTIFY to it).
      it('beside a writing transaction that fired its deferred triggers early (SET CONSTRAINTS ALL IMMEDIATE)', async () => {
        const blocker = await open(db.url, 'vis-immediate');
        await blocker.query('BEGIN');
        await blocker.query(`INSERT INTO stall VALUES (5, 'immediate')`);
        await blocker.query('SET CONSTRAINTS ALL IMMEDIATE');
        try {
          await deliveredWhileOpen('a writer that ran SET CONSTRAINTS ALL IMMEDIATE', (b) => b.pid === blocker.pid, promptly);
        } finally {
          await blocker.query('COMMIT');
          await arrive(stall, [5], 'its own change, once committed');
          await close(blocker);
        }
      });
    });

    describe('3. no busy polling', () => {
      it('idle feeds of 20 tables cost one log query per pollInterval in total; writes cost reads in proportion to commits', async () => {
        const pollInterval = 500;
        const pool = new CountingPool({ connectionString: db.url, max: 5 });
        pool.on('error', () => undefined);
        const tide = await connect({ pool, pollInterval, pruneInterval: 0, logger: quietLogger });
        const tables = Array.from({ length: 20 }, (_, index) => `feed_${index}`);
        const streams = tables.map((table) => record(tide, table));
        const blocker = await open(other.url, 'vis-unrelated-writer');
        const writer = await open(db.url, 'vis-noise');
        try {
          await Promise.all(streams.map((stream) => stream.ready));
          await blocker.query('BEGIN');
          await blocker.query(`INSERT INTO elsewhere VALUES (1000)`);
          await sleep(100);

          // Idle: an unrelated open writer in another database, 200 commits to an unwatched table.
          pool.reset();
          const idleStart = performance.now();
          let noise = 0;
          await Promise.all([
            (async () => {
              for (; noise < 200; noise += 1) {
                await writer.query(`INSERT INTO noise (v) VALUES ($1)`, [noise]);
                await sleep(10);
              }
            })(),
            sleep(3_000),
          ]);
          const idleMs = performance.now() - idleStart;
          const idle = { total: pool.total, log: pool.logQueries, summary: pool.summary() };
          console.log(`${tag} idle ${ms(idleMs)}, 20 live streams, ${noise} unwatched commits: ${idle.summary} (pollInterval ${pollInterval} ms)`);
          expect(idle.total).toBeLessThanOrEqual(Math.floor(idleMs / pollInterval) + 2);

          // Busy: commits to the watched tables are read, about once each.
          pool.reset();
          const busyStart = performance.now();
          const commits = 100;
          for (let index = 0; index < commits; index += 1) {
            await writer.query(`INSERT INTO feed_${index % tables.length} VALUES ($1, $1)`, [index]);
          }
          await Promise.all(
            streams.map((stream, table) =>
              arrive(stream, Array.from({ length: commits / tables.length }, (_, round) => round * tables.length + table), `the commits to feed_${table}`),
            ),
          );
          const busyMs = performance.now() - busyStart;
          console.log(`${tag} busy ${ms(busyMs)}, ${commits} commits to watched tables: ${pool.summary()}`);
          expect(pool.logQueries).toBeGreaterThan(0);
          expect(pool.total).toBeLessThanOrEqual(3 * commits + Math.floor(busyMs / pollInterval) + 2);
        } finally {
          for (const stream of streams) stream.unsubscribe();
          await blocker.query('ROLLBACK').catch(() => undefined);
          await close(blocker);
          await close(writer);
          await tide.close();
          await pool.end();
        }
      });
    });

    describe('4. a writer that skipped NOTIFY is delivered promptly, without the poll', () => {
      let tide: Tide;
      let listener: pg.Client;
      const notified = new Map<string, number>();
      const notifications = (table: string) => notified.get(table) ?? 0;
      const relids = new Map<string, string>();
      /** One stream of `relay` for the whole group, so its feed is idle (not joining) when a case writes. */
      let relay: Recorded;

      beforeAll(async () => {
        tide = await db.tide({ pollInterval: noPoll, pruneInterval: 0 });
        relay = record(tide, 'relay');
        await relay.ready;
        const { rows } = await db.pool.query(`SELECT relname, oid::text AS relid FROM pg_class WHERE relname IN ('hot', 'relay')`);
        for (const row of rows) relids.set(row.relid, row.relname);
        // Counts pgtide's NOTIFYs per table: a commit that skipped NOTIFY sends none.
        listener = await open(db.url, 'vis-listener');
        listener.on('notification', ({ channel, payload }) => {
          const table = relids.get(payload ?? '');
          if (channel === 'pgtide' && table) notified.set(table, notifications(table) + 1);
        });
        await listener.query('LISTEN pgtide');
        await sleep(50);
      });
      afterAll(() => relay?.unsubscribe());

      it('4 concurrent writers, 200 single-row commits each: all 800 arrive, with the poll 60 s away', async () => {
        const hot = record(tide, 'hot');
        await hot.ready;
        const writers = 4;
        const perWriter = 200;
        const connections = await Promise.all(Array.from({ length: writers }, (_, writer) => open(db.url, `vis-writer-${writer}`)));
        const sent = new Map<number, number>();
        const before = notifications('hot');
        await Promise.all(
          connections.map(async (connection, writer) => {
            for (let seq = 0; seq < perWriter; seq += 1) {
              const id = writer * 1000 + seq;
              sent.set(id, performance.now());
              await connection.query(`INSERT INTO hot (id, writer) VALUES ($1, $2)`, [id, writer]);
            }
          }),
        );
        const written = performance.now();
        await arrive(hot, [...sent.keys()], `all ${writers * perWriter} changes`, 10_000);
        const latencies = [...sent].map(([id, at]) => hot.at.get(id)! - at);
        const lastArrival = Math.max(...hot.at.values());
        await sleep(50);
        console.log(
          `${tag} ${writers}x${perWriter} commits: insert sent -> emitted p50 ${ms(percentile(latencies, 50))}, p99 ${ms(percentile(latencies, 99))}, ` +
            `max ${ms(Math.max(...latencies))}; all delivered ${ms(lastArrival - written)} after the last commit; ` +
            `${notifications('hot') - before} NOTIFYs for ${writers * perWriter} commits (the others skipped NOTIFY)`,
        );
        expect(hot.ids).toHaveLength(writers * perWriter);
        expect(new Set(hot.ids).size).toBe(writers * perWriter);
        hot.unsubscribe();
        await Promise.all(connections.map((connection) => close(connection)));
      });

      it('targeted: A skips NOTIFY while B holds it, B commits and notifies, A is held in its commit, then A is read without any NOTIFY', async () => {
        const holder = await open(db.url, 'vis-gates');
        await holder.query(`SELECT pg_advisory_lock(${gateLock}, 1), pg_advisory_lock(${gateLock}, 2)`);
        const b = await open(db.url, 'vis-b');
        const a = await open(db.url, 'vis-a');
        const before = notifications('relay');
        // B's COMMIT runs pgtide's wake-up (takes the NOTIFY lock), then waits at gate 1.
        await b.query('BEGIN');
        await b.query(`INSERT INTO relay VALUES (1, 'b')`);
        await b.query(`INSERT INTO gate (lock_key) VALUES (1)`);
        const bCommit = b.query('COMMIT');
        bCommit.catch(() => undefined);
        await waitingOnLock(b.pid, 'B inside its commit');
        // A's COMMIT finds the NOTIFY lock taken, holds the pending lock, then waits at gate 2.
        await a.query('BEGIN');
        await a.query(`INSERT INTO relay VALUES (2, 'a')`);
        await a.query(`INSERT INTO gate (lock_key) VALUES (2)`);
        const aCommit = a.query('COMMIT');
        aCommit.catch(() => undefined);
        await waitingOnLock(a.pid, 'A inside its commit');
        expect(await wakeLocks('relay')).toEqual(
          expect.arrayContaining([
            { pid: b.pid, lock: 'notify', mode: 'ExclusiveLock' },
            { pid: a.pid, lock: 'pending', mode: 'ShareLock' },
          ]),
        );
        await holder.query(`SELECT pg_advisory_unlock(${gateLock}, 1)`);
        await bCommit;
        await arrive(relay, [1], "B's change, after B's NOTIFY");
        // The reader saw the pending lock and keeps re-reading (1, 2, 4 .. ms) while A is held.
        await sleep(300);
        expect(relay.at.has(2)).toBe(false);
        await holder.query(`SELECT pg_advisory_unlock(${gateLock}, 2)`);
        await aCommit;
        const committed = performance.now();
        await arrive(relay, [2], "A's change, which sent no NOTIFY", 10_000);
        await sleep(50);
        console.log(`${tag} A held 300 ms in its commit: commit -> delivered ${ms(relay.at.get(2)! - committed)} (pending re-read backoff), NOTIFYs ${notifications('relay') - before}`);
        expect(notifications('relay') - before).toBe(1);
        for (const client of [a, b, holder]) await close(client);
      });

      it('a transaction of many statements notifies once, and marks the first row of each statement', async () => {
        const before = notifications('relay');
        const client = await open(db.url, 'vis-many');
        await client.query('BEGIN');
        const ids = Array.from({ length: 30 }, (_, index) => 100 + index);
        for (const id of ids) await client.query(`INSERT INTO relay VALUES ($1, 'one of many')`, [id]);
        await client.query(`INSERT INTO relay SELECT g, 'a statement of ten' FROM generate_series(200, 209) g`);
        await client.query(`DELETE FROM relay WHERE id IN (100, 101)`);
        const { rows } = await client.query<{ txid: string }>('SELECT pg_current_xact_id()::text AS txid');
        await client.query('COMMIT');
        await arrive(relay, [...ids, ...Array.from({ length: 10 }, (_, index) => 200 + index)], 'every change of the transaction');
        await sleep(50);
        expect(notifications('relay') - before).toBe(1);
        const logged = await db.pool.query<{ rows: number; marked: number }>(
          `SELECT count(*)::int AS rows, count(*) FILTER (WHERE wake)::int AS marked FROM pgtide.log WHERE txid = $1::xid8`,
          [rows[0]!.txid],
        );
        // 30 single-row statements, one of ten rows, one deleting two: 32 statements.
        expect(logged.rows[0]).toEqual({ rows: 42, marked: 32 });
        await close(client);
      });

      // Documented limit: the writer elected to NOTIFY may still fail in its commit after
      // the wake-up trigger ran (a deferred foreign key checked later, a serialization
      // failure at commit). Then nobody notifies, and a writer that left the NOTIFY to it
      // is delivered by the poll: within pollInterval, here 300 ms.
      it('A left the NOTIFY to B, and B then failed at commit (deferred foreign key): A arrives by the poll', async () => {
        const polledTide = await db.tide({ pollInterval: 300, pruneInterval: 0 });
        const polled = record(polledTide, 'relay');
        await polled.ready;
        const holder = await open(db.url, 'vis-gates');
        await holder.query(`SELECT pg_advisory_lock(${gateLock}, 3)`);
        const b = await open(db.url, 'vis-b-fails');
        try {
          await b.query('BEGIN');
          await b.query(`INSERT INTO relay VALUES (10, 'b, rolled back')`);
          await b.query(`INSERT INTO gate (lock_key) VALUES (3)`);
          await b.query(`INSERT INTO child VALUES (1, 999)`); // no parent 999: fails at commit, after the gate
          const bCommit = b.query('COMMIT').then(
            () => undefined,
            (error: { code?: string }) => error.code,
          );
          await waitingOnLock(b.pid, 'B inside its commit');
          const sent = performance.now();
          await db.pool.query(`INSERT INTO relay VALUES (11, 'a')`);
          await holder.query(`SELECT pg_advisory_unlock(${gateLock}, 3)`);
          expect(await bCommit).toBe('23503');
          await arrive(polled, [11], "A's committed change, though the NOTIFY-holder rolled back", promptly);
          console.log(`${tag} A beside a failed notifier: commit -> delivered ${ms(polled.at.get(11)! - sent)} (pollInterval 300 ms)`);
          expect(polled.ids).not.toContain(10);
        } finally {
          polled.unsubscribe();
          await close(b);
          await close(holder);
        }
      });

      // Documented limit: a statement whose text matches prepare\s+transaction or
      // set\s+constraints sends no NOTIFY (pgtide cannot tell it from a real PREPARE), so it
      // is delivered by the pending re-read or the poll: within pollInterval, here 300 ms.
      it("an autocommit statement whose text mentions 'prepare transaction' arrives by the poll", async () => {
        const polledTide = await db.tide({ pollInterval: 300, pruneInterval: 0 });
        const polled = record(polledTide, 'relay');
        await polled.ready;
        const sent = performance.now();
        await db.pool.query(`INSERT INTO relay VALUES (20, 'checklist: prepare transaction logs')`);
        await arrive(polled, [20], "a change whose statement mentions 'prepare transaction'", promptly);
        console.log(`${tag} 'prepare transaction' in the text: commit -> delivered ${ms(polled.at.get(20)! - sent)} (pollInterval 300 ms)`);
        polled.unsubscribe();
      });
    });

    describe('6. two-phase commit', () => {
      let tide: Tide;
      const pollInterval = 200;

      beforeAll(async () => {
        tide = await db.tide({ pollInterval, pruneInterval: 0 });
      });

      it('PREPARE TRANSACTION succeeds beside committing writers; delivered after COMMIT PREPARED, never after ROLLBACK PREPARED; listed by blockers()', async (context) => {
        if (!twoPhase) {
          console.warn(`${tag} skipped: max_prepared_transactions is 0 on this server (DATABASE_URL?)`);
          context.skip('max_prepared_transactions is 0');
        }
        const tpc = record(tide, 'tpc');
        await tpc.ready;
        const holder = await open(db.url, 'vis-gates');
        await holder.query(`SELECT pg_advisory_lock(${gateLock}, 4)`);
        // B is inside its commit, holding the NOTIFY lock of tpc...
        const b = await open(db.url, 'vis-b-committing');
        await b.query('BEGIN');
        await b.query(`INSERT INTO tpc VALUES (1, 'b')`);
        await b.query(`INSERT INTO gate (lock_key) VALUES (4)`);
        const bCommit = b.query('COMMIT');
        bCommit.catch(() => undefined);
        await waitingOnLock(b.pid, 'B inside its commit');
        // ...and another connection commits to tpc all along.
        const busy = await open(db.url, 'vis-busy');
        let stop = false;
        let busyCommits = 0;
        const busyLoop = (async () => {
          for (let id = 100_000; !stop; id += 1, busyCommits += 1) await busy.query(`INSERT INTO tpc VALUES ($1, 'busy')`, [id]);
        })();
        const [kept, dropped] = [nextGid(), nextGid()];
        try {
          for (const [gid, id] of [[kept, 10], [dropped, 11]] as const) {
            const writer = await open(db.url, 'vis-2pc');
            await writer.query('BEGIN');
            await writer.query(`INSERT INTO tpc VALUES ($1, 'prepared')`, [id]);
            await writer.query(`PREPARE TRANSACTION '${gid}'`); // must not fail because of pgtide
            await close(writer);
          }
        } finally {
          stop = true;
          await busyLoop;
          await holder.query(`SELECT pg_advisory_unlock(${gateLock}, 4)`);
          await bCommit;
        }
        await arrive(tpc, [1], "B's change");

        const blockers = await tide.blockers();
        const listed = blockers.find((blocker) => blocker.gid === kept);
        console.log(`${tag} blockers() while prepared (${busyCommits} concurrent commits):`, JSON.stringify(listed));
        expect(listed).toMatchObject({ kind: 'prepared', pid: null, gid: kept, database: new URL(db.url).pathname.slice(1), state: null });
        expect(listed!.txid).toMatch(/^\d+$/);
        expect(listed!.ageSeconds).toBeGreaterThanOrEqual(0);
        expect(listed!.holdsBack).toEqual(expect.stringContaining('its own changes'));
        expect(blockers.some((blocker) => blocker.gid === dropped)).toBe(true);
        expect(tpc.at.has(10) || tpc.at.has(11)).toBe(false);

        const committing = performance.now();
        await db.pool.query(`COMMIT PREPARED '${kept}'`);
        await arrive(tpc, [10], 'the change of COMMIT PREPARED', 10_000);
        console.log(`${tag} COMMIT PREPARED -> delivered ${ms(tpc.at.get(10)! - committing)} (pollInterval ${pollInterval} ms)`);
        await db.pool.query(`ROLLBACK PREPARED '${dropped}'`);
        await db.pool.query(`INSERT INTO tpc VALUES (12, 'after the rollback')`);
        await arrive(tpc, [12], 'a change committed after ROLLBACK PREPARED');
        await sleep(2 * pollInterval);
        expect(tpc.ids).not.toContain(11);
        expect((await tide.blockers()).some((blocker) => blocker.gid === kept || blocker.gid === dropped)).toBe(false);
        tpc.unsubscribe();
        await close(b);
        await close(busy);
        await close(holder);
      });

      // pgtide tells a PREPARE by its text (PostgreSQL refuses to PREPARE a transaction that
      // executed NOTIFY): every spelling of the command must be recognised.
      it('PREPARE TRANSACTION written across lines or with more than one space succeeds', async (context) => {
        if (!twoPhase) context.skip('max_prepared_transactions is 0 on this server');
        const failures: string[] = [];
        for (const [index, spelling] of ['PREPARE\n  TRANSACTION', 'PREPARE  TRANSACTION', 'PREPARE\tTRANSACTION'].entries()) {
          const gid = nextGid();
          const writer = await open(db.url, 'vis-2pc-spelling');
          try {
            await writer.query('BEGIN');
            await writer.query(`INSERT INTO tpc VALUES ($1, 'spelling')`, [200 + index]);
            await writer.query(`${spelling} '${gid}'`);
            await db.pool.query(`ROLLBACK PREPARED '${gid}'`);
          } catch (error) {
            failures.push(`${JSON.stringify(spelling)}: ${String(error)}`);
          } finally {
            await close(writer);
          }
        }
        expect(failures).toEqual([]);
      });

      // SET CONSTRAINTS ALL IMMEDIATE (a way to surface deferred constraint errors before
      // PREPARE) runs the wake-up trigger before PREPARE TRANSACTION: it must not NOTIFY.
      it('SET CONSTRAINTS ALL IMMEDIATE, then PREPARE TRANSACTION, succeeds', async (context) => {
        if (!twoPhase) context.skip('max_prepared_transactions is 0 on this server');
        const gid = nextGid();
        const writer = await open(db.url, 'vis-2pc-immediate');
        try {
          await writer.query('BEGIN');
          await writer.query(`INSERT INTO tpc VALUES (300, 'immediate')`);
          await writer.query('SET CONSTRAINTS ALL IMMEDIATE');
          await expect(writer.query(`PREPARE TRANSACTION '${gid}'`)).resolves.toBeDefined();
          await db.pool.query(`ROLLBACK PREPARED '${gid}'`);
        } finally {
          await close(writer);
        }
      });
    });
  });
}
