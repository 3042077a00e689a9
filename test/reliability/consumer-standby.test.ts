import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';
import { DeliveryChecker, report } from './checker.js';
import { seeded } from './seeded.js';

/**
 * One consumer name, one reader, with hot standby: several processes follow the same
 * durable consumer; one reads, the others wait. The reader is killed with SIGKILL at random
 * moments while the parent writes; a standby must take over quickly, resume after the last
 * saved position (nothing lost, only the unsaved tail again), and never two processes may
 * handle changes at the same time.
 */

const table = 'standby_rows';
const consumer = 'standby-consumer';
const leaseTimeout = 2_000;
const acknowledgeFlushDelay = 20;
const processes = 3;
const rows = 40;
/** Update rounds at least (each writes every row once): 40 x (1 + 37) = 1520 writes. */
const minRounds = 37;
const seed = Number(process.env.PGTIDE_TEST_SEED ?? 20_240_611);

const random = seeded(seed);
const kills = 3 + Math.floor(random() * 2);

/** One change as a standby child recorded it (see `standby-child.ts`). */
interface Recorded {
  readonly key: number;
  readonly seq: number;
  readonly changeId: string;
  readonly pid: number;
  /** `Date.now()` in the child when it started handling the change. */
  readonly at: number;
}

interface StandbyChild {
  readonly process: ChildProcess;
  readonly pid: number;
  readonly state: { standbyAt?: number; activeAt?: number; killedAt?: number; stopping?: boolean };
  /** Resolves when the child reports `standby` or `active`, whichever comes first. */
  readonly settled: Promise<void>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly errors: string[];
}

const childScript = fileURLToPath(new URL('./standby-child.ts', import.meta.url));

let db: TestDatabase;
let tide: Tide;
let dir: string;
let outFile: string;
const children: StandbyChild[] = [];
/** Anything the feature did that it must never do, as it was seen. */
const violations: string[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, seq int NOT NULL)`);
  tide = await db.tide({ pruneInterval: 0 });
  await tide.watch(table); // capture before the first write
  dir = mkdtempSync(join(tmpdir(), 'pgtide-standby-'));
  outFile = join(dir, 'deliveries.tsv');
});
afterAll(async () => {
  for (const child of children) if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
  await Promise.all(children.map((child) => child.exited));
  await db?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const alive = (child: StandbyChild) => child.state.killedAt === undefined && !child.state.stopping;

function startChild(): StandbyChild {
  const args = [childScript, db.url, outFile, table, consumer, String(leaseTimeout), String(acknowledgeFlushDelay)];
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const state: StandbyChild['state'] = {};
  const errors: string[] = [];
  let settle!: () => void;
  const settled = new Promise<void>((resolve) => (settle = resolve));
  child.on('message', (message: { type?: string; code?: string; message?: string; at?: number }) => {
    const at = message.at ?? Date.now();
    if (message.type === 'standby') {
      if (state.standbyAt !== undefined) violations.push(`pid ${child.pid} reported standby twice`);
      if (state.activeAt !== undefined) violations.push(`pid ${child.pid} reported standby after it was active`);
      state.standbyAt = at;
      settle();
    } else if (message.type === 'active') {
      state.activeAt = at;
      // The lease is only free once the previous reader was killed (or stopped).
      for (const other of children) {
        if (other.process !== child && other.state.activeAt !== undefined && alive(other)) {
          violations.push(`pid ${child.pid} became active at ${at} while pid ${other.pid} (active since ${other.state.activeAt}) was alive`);
        }
      }
      settle();
    } else if (message.type === 'error') {
      errors.push(`${message.code ?? 'raw'}: ${message.message ?? ''}`);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const started: StandbyChild = { process: child, pid: child.pid!, state, settled, exited, errors };
  children.push(started);
  return started;
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for: ${what}`)), ms))),
  ]);
}

function readRecords(): Recorded[] {
  if (!existsSync(outFile)) return [];
  const lines = readFileSync(outFile, 'utf8').split('\n');
  lines.pop(); // '' after the last newline, or an incomplete last line (never acknowledged)
  return lines.map((line) => {
    const [key, seq, changeId, pid, at] = line.split('\t');
    return { key: Number(key), seq: Number(seq), changeId: changeId!, pid: Number(pid), at: Number(at) };
  });
}

describe('one consumer name, one reader, with hot standby', () => {
  it('a standby takes over a SIGKILLed reader at once: nothing lost, order kept, never two readers', { timeout: 90_000 }, async () => {
    const begun = Date.now();
    const checker = new DeliveryChecker(`standby takeover, SIGKILL x${kills} (seed ${seed})`);

    // Three processes with the same consumer name: one reads, two wait.
    const first = Array.from({ length: processes }, () => startChild());
    await within(Promise.all(first.map((child) => child.settled)), 30_000, 'every child reports standby or active');
    const initiallyActive = first.filter((child) => child.state.activeAt !== undefined);
    expect(initiallyActive).toHaveLength(1);
    expect(first.filter((child) => child.state.standbyAt !== undefined && child.state.activeAt === undefined)).toHaveLength(processes - 1);
    let active = initiallyActive[0]!;

    // Writers: 40 rows, then rounds of one update of each row (seq counts up per row). While
    // kills are still to come, a round is a burst and a pause, so kills land both in the middle
    // of a backlog and in quiet moments; once they are done, the remaining rounds go flat out.
    let killsDone = false;
    let rounds = 0;
    const clients = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const client = new pg.Client({ connectionString: db.url });
        await client.connect();
        return client;
      }),
    );
    const writing = (async () => {
      await Promise.all(
        clients.map(async (client, writer) => {
          for (let id = writer; id < rows; id += clients.length) {
            await client.query(`INSERT INTO ${table} VALUES ($1, 0)`, [id]);
            checker.produce(id, 0);
          }
        }),
      );
      while (!killsDone || rounds < minRounds) {
        await Promise.all(
          clients.map(async (client, writer) => {
            for (let id = writer; id < rows; id += clients.length) {
              const { rows: updated } = await client.query(`UPDATE ${table} SET seq = seq + 1 WHERE id = $1 RETURNING seq`, [id]);
              checker.produce(id, updated[0].seq as number);
            }
          }),
        );
        rounds += 1;
        if (!killsDone) await sleep(150);
      }
      await Promise.all(clients.map((client) => client.end()));
    })();

    /** Per kill: who died when, who took over, and how long that took. */
    const killLog: Array<{ victim: StandbyChild; killedAt: number; successor: StandbyChild }> = [];
    for (let kill = 0; kill < kills; kill += 1) {
      await sleep(200 + Math.floor(random() * 700));
      // Every replacement is waiting before the reader dies: there is always a standby.
      await within(Promise.all(children.filter(alive).map((child) => child.settled)), 30_000, 'the replacement reports standby');
      const standbys = children.filter((child) => alive(child) && child !== active);
      expect(standbys.length).toBeGreaterThanOrEqual(processes - 1);
      for (const standby of standbys) expect(standby.state.activeAt, `pid ${standby.pid} is a standby`).toBeUndefined();

      const victim = active;
      victim.state.killedAt = Date.now();
      victim.process.kill('SIGKILL');
      expect(await victim.exited).toMatchObject({ signal: 'SIGKILL' });
      await eventually(
        () => standbys.some((child) => child.state.activeAt !== undefined),
        `a standby takes over from pid ${victim.pid}`,
        leaseTimeout + 5_000,
      );
      const successors = standbys.filter((child) => child.state.activeAt !== undefined);
      expect(successors).toHaveLength(1);
      active = successors[0]!;
      killLog.push({ victim, killedAt: victim.state.killedAt, successor: active });
      // A replacement, started once the successor holds the lease: it must wait as a standby.
      startChild();
    }
    killsDone = true;
    await writing;

    // The last reader catches up with every committed write.
    await eventually(
      () => {
        const seen = new Set(readRecords().map((record) => `${record.key}#${record.seq}`));
        for (let id = 0; id < rows; id += 1) {
          for (let seq = 0; seq <= rounds; seq += 1) if (!seen.has(`${id}#${seq}`)) return false;
        }
        return true;
      },
      'the active child delivers every committed write',
      30_000,
    );
    // Stop the standbys first, then the reader: a clean stop of each.
    await within(Promise.all(children.filter(alive).map((child) => child.settled)), 30_000, 'the last replacement reports standby');
    const remaining = children.filter((child) => alive(child) && child !== active);
    for (const child of remaining) {
      child.state.stopping = true;
      child.process.send('stop');
    }
    for (const child of remaining) expect(await child.exited).toEqual({ code: 0, signal: null });
    active.state.stopping = true;
    active.process.send('stop');
    expect(await active.exited).toEqual({ code: 0, signal: null });
    const ranMs = Date.now() - begun;

    // ---- What the delivery file says.
    const records = readRecords();
    const byPid = new Map<number, Recorded[]>();
    for (const record of records) {
      const list = byPid.get(record.pid) ?? [];
      list.push(record);
      byPid.set(record.pid, list);
    }
    const childByPid = new Map(children.map((child) => [child.pid, child]));
    for (const pid of byPid.keys()) expect(childByPid.has(pid), `pid ${pid} is one of our children`).toBe(true);

    // No concurrent processing: each process's [first, last] record times are disjoint and in file order.
    const sessions = [...byPid.entries()].map(([pid, list]) => ({ pid, first: list[0]!.at, last: list.at(-1)!.at, list }));
    sessions.sort((a, b) => a.first - b.first);
    const pidOrder = [...new Set(records.map((record) => record.pid))];
    expect(sessions.map((session) => session.pid)).toEqual(pidOrder);
    for (let index = 1; index < sessions.length; index += 1) {
      const before = sessions[index - 1]!;
      const after = sessions[index]!;
      if (!(before.last < after.first)) {
        violations.push(`pid ${before.pid} handled changes until ${before.last}, pid ${after.pid} from ${after.first}: overlap`);
      }
    }
    // Only the initial reader and the successors delivered, in that order.
    expect(pidOrder).toEqual([initiallyActive[0]!.pid, ...killLog.map((entry) => entry.successor.pid)]);

    // Standby before anything: a process that reported standby delivered nothing before it, and
    // only became active afterwards.
    for (const child of children) {
      if (child === initiallyActive[0]) continue;
      expect(child.state.standbyAt, `pid ${child.pid} reported standby`).toBeDefined();
      const mine = byPid.get(child.pid) ?? [];
      if (mine.length > 0) expect(mine[0]!.at).toBeGreaterThanOrEqual(child.state.standbyAt!);
      if (child.state.activeAt !== undefined) expect(child.state.activeAt).toBeGreaterThanOrEqual(child.state.standbyAt!);
    }

    // Per-row order within each process; nothing lost; a change comes again only in the process
    // after a kill, and only from the killed process's unsaved tail.
    const firstSeen = new Map<string, Recorded>();
    const redeliveredAfterKill: number[] = [];
    const oldestTailMs: number[] = [];
    for (const [index, session] of sessions.entries()) {
      if (index > 0) checker.newSession();
      const inSession = new Set<string>();
      let again = 0;
      let oldest = 0;
      for (const record of session.list) {
        checker.deliver(record.key, record.seq);
        const id = `${record.key}#${record.seq}`;
        if (inSession.has(id)) violations.push(`pid ${session.pid} delivered ${id} twice`);
        inSession.add(id);
        const earlier = firstSeen.get(id);
        if (earlier === undefined) {
          firstSeen.set(id, record);
          continue;
        }
        again += 1;
        const previous = sessions[index - 1]!;
        const killedAt = childByPid.get(previous.pid)!.state.killedAt;
        if (earlier.pid !== previous.pid || killedAt === undefined) {
          violations.push(`pid ${session.pid} redelivered ${id}, first delivered by pid ${earlier.pid} (not the killed predecessor)`);
        } else {
          oldest = Math.max(oldest, killedAt - earlier.at);
        }
      }
      if (index > 0) {
        redeliveredAfterKill.push(again);
        oldestTailMs.push(oldest);
      }
    }
    const counts = report(checker);

    // Takeover: kill -> the successor's first handled change (and -> its `active` report).
    const takeovers = killLog.map((entry, index) => {
      const session = sessions.find((candidate) => candidate.pid === entry.successor.pid);
      return {
        kill: index + 1,
        victim: entry.victim.pid,
        successor: entry.successor.pid,
        'victim last record before kill (ms)': entry.killedAt - (byPid.get(entry.victim.pid)?.at(-1)?.at ?? Number.NaN),
        'takeover to first record (ms)': (session?.first ?? Number.NaN) - entry.killedAt,
        'takeover to active (ms)': entry.successor.state.activeAt! - entry.killedAt,
        redelivered: redeliveredAfterKill[index],
        'oldest redelivered (ms before kill)': oldestTailMs[index],
      };
    });
    console.table(takeovers);
    console.log(
      `standby: seed ${seed}, ${kills} kills, ${children.length} processes, ${rounds} update rounds, ` +
        `${counts.produced} produced, ${counts.delivered} delivered, ${counts.duplicates} duplicates, ` +
        `${counts.lost} lost, ${counts.outOfOrder} out of order, ${ranMs} ms`,
    );
    if (violations.length > 0) console.log('standby violations:', violations);

    expect(violations).toEqual([]);
    expect(checker.problems).toEqual([]);
    expect(counts).toMatchObject({ lost: 0, outOfOrder: 0 });
    expect(counts.produced).toBeGreaterThanOrEqual(rows * (minRounds + 1));
    expect(counts.duplicates).toBe(redeliveredAfterKill.reduce((sum, n) => sum + n, 0));
    for (const takeover of takeovers) {
      expect(takeover['takeover to first record (ms)']).toBeGreaterThan(0);
      expect(takeover['takeover to first record (ms)']).toBeLessThan(leaseTimeout + 3_000);
      expect(takeover['takeover to active (ms)']).toBeLessThan(leaseTimeout + 3_000);
    }
    // The unsaved tail is what was acknowledged within a few flush intervals of the kill.
    for (const oldest of oldestTailMs) expect(oldest).toBeLessThan(2_000);
    for (const child of children) expect(child.errors, `pid ${child.pid} stream errors`).toEqual([]);

    // The table agrees (one write per insert plus one per update), and the clean stop saved everything.
    const { rows: sums } = await db.pool.query(`SELECT sum(seq + 1)::int AS writes FROM ${table}`);
    expect(sums[0].writes).toBe(counts.produced);
    expect((await tide.consumers()).find((c) => c.name === consumer)?.lagChanges).toBe(0);
  });
});
