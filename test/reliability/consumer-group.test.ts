import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers.js';
import { GroupChecker, type ProcessingRecord } from './checker.js';
import { between, seeded } from './seeded.js';

/**
 * A consumer group under faults: member processes with one consumer name and `group: true`
 * share a table's changes by partition. While 20,000 changes over 200 rows are written,
 * member A is SIGKILLed, restarted (A2), a fourth member D joins, A2 is SIGKILLed and
 * restarted (A3). Every member logs the start and end of each change it handles
 * (`group-child.ts`); from those logs: every change processed, each row's changes in commit
 * order across every handover, never one row in two members at once (outside a member's
 * dying moments), and a change done twice only when the member that did it first was
 * killed before saving it.
 */

const table = 'group_items';
const consumer = 'grp';
const leaseTimeout = 2_000;
const acknowledgeFlushDelay = 20;
const partitions = 16; // the default
const rows = 200;
const total = 20_000; // 200 inserts, then updates
const writers = 4;
const batch = 10; // updates per transaction, each of a different row
const updatesPerWriter = (total - rows) / (writers * batch);
/** Aimed-at writing time (ms); the writes wait at gates until each fault is done, so faults land mid-stream. */
const writeMs = Number(process.env.PGTIDE_GROUP_WRITE_MS ?? 8_000);
/** A killed member's redone work must have ended at most this long before the kill (its unsaved tail). */
const unsavedTailMs = 2_500;
const seed = Number(process.env.PGTIDE_TEST_SEED ?? 20_240_612);


/** CLOCK_MONOTONIC in microseconds: the clock of the children's logs (one for the whole machine). */
const micros = (): number => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface GroupReport {
  readonly holds: readonly number[];
  readonly partitions: number;
  readonly members: number;
  readonly us: number;
}

interface Member {
  readonly name: string;
  readonly process: ChildProcess;
  readonly pid: number;
  readonly logFile: string;
  readonly groups: GroupReport[];
  readonly errors: string[];
  readonly state: { ready: boolean; killSentAt?: number; stopping?: boolean; exitedAt?: number; exit?: { code: number | null; signal: NodeJS.Signals | null } };
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const childScript = fileURLToPath(new URL('./group-child.ts', import.meta.url));

let db: TestDatabase;
let tide: Tide;
let dir: string;
const members: Member[] = [];
/** Set when a member exits without being told to: every wait fails with it. */
let failure: Error | undefined;
let passed = false;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, seq int NOT NULL)`);
  tide = await db.tide({ pruneInterval: 0 });
  await tide.watch(table); // capture before the first write
  dir = mkdtempSync(join(tmpdir(), 'pgtide-group-'));
});
afterAll(async () => {
  for (const member of members) if (member.state.exit === undefined) member.process.kill('SIGKILL');
  await Promise.all(members.map((member) => member.exited));
  await db?.drop();
  if (dir && (passed || !process.env.PGTIDE_KEEP_LOGS)) rmSync(dir, { recursive: true, force: true });
  else if (dir) console.log(`consumer-group: member logs kept in ${dir}`);
});

function startMember(name: string): Member {
  const logFile = join(dir, `${name}.log`);
  const args = [childScript, db.url, logFile, table, consumer, String(leaseTimeout), String(acknowledgeFlushDelay)];
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const groups: GroupReport[] = [];
  const errors: string[] = [];
  const state: Member['state'] = { ready: false };
  child.on('message', (message: { type?: string; code?: string; message?: string } & Partial<GroupReport>) => {
    if (message.type === 'ready') state.ready = true;
    else if (message.type === 'group') {
      groups.push({ holds: message.holds ?? [], partitions: message.partitions ?? Number.NaN, members: message.members ?? Number.NaN, us: message.us ?? micros() });
    } else if (message.type === 'error') errors.push(`${message.code ?? 'raw'}: ${message.message ?? ''}`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      state.exitedAt = micros();
      state.exit = { code, signal };
      if (state.killSentAt === undefined && !state.stopping && !failure) {
        failure = new Error(`member ${name} (pid ${child.pid}) exited by itself (code ${code}, signal ${signal}); errors: ${errors.join('; ') || 'none reported'}`);
      }
      resolve({ code, signal });
    }),
  );
  const member: Member = { name, process: child, pid: child.pid!, logFile, groups, errors, state, exited };
  members.push(member);
  return member;
}

/** Polls `check` every `every` ms; fails after `timeout` ms, or at once when a member died by itself. */
async function until(check: () => boolean, what: string, timeout = 30_000, every = 20): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (failure) throw failure;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}; members' last group reports: ${groupState()}`);
    await sleep(every);
  }
}

/** Each member's last `group` report, for failure messages. */
const groupState = (): string =>
  members
    .map((member) => {
      const last = member.groups.at(-1);
      const how = member.state.killSentAt !== undefined ? ' (killed)' : member.state.exit !== undefined ? ' (exited)' : '';
      return `${member.name}${how}: ${last === undefined ? 'none' : `holds [${last.holds.join(',')}] of ${last.partitions}, ${last.members} members`}`;
    })
    .join('; ');
const holds = (member: Member): readonly number[] => member.groups.at(-1)?.holds ?? [];
const live = () => members.filter((member) => member.state.exit === undefined && member.state.killSentAt === undefined && !member.state.stopping);

function readRecords(member: Member): ProcessingRecord[] {
  if (!existsSync(member.logFile)) return [];
  const lines = readFileSync(member.logFile, 'utf8').split('\n');
  lines.pop(); // '' after the last newline, or a line a kill cut short
  const records: ProcessingRecord[] = [];
  for (const line of lines) {
    const [kind, key, seq, changeId, at] = line.split('\t');
    if (kind !== 'S' && kind !== 'E') continue;
    records.push({ instance: member.name, kind: kind === 'S' ? 'start' : 'end', key: Number(key), seq: Number(seq), changeId: changeId!, at: Number(at) });
  }
  return records;
}

describe('consumer group under faults', () => {
  it(
    'three members, one SIGKILLed twice and restarted, a fourth joining: nothing lost, rows in order, never one row in two members',
    { timeout: 120_000 },
    async () => {
      const begun = Date.now();
      const random = seeded(seed);
      const pick = between(random);
      // When each fault happens, as a share of the writes; the writes stop at the next gate until it is done.
      const killAAt = Math.floor(pick(0.1, 0.25) * total);
      const joinDAt = Math.floor(pick(0.35, 0.5) * total);
      const killA2At = Math.floor(pick(0.6, 0.8) * total);
      console.log(`consumer-group: seed ${seed}; kill A at ${killAAt}, D joins at ${joinDAt}, kill A2 at ${killA2At} of ${total} changes`);
      const committed: Array<{ key: number; seq: number }> = [];
      let gate = Math.floor(0.35 * total);
      let stopWriting = false;

      // Three members; wait until each holds a share before writing.
      const first = ['A', 'B', 'C'].map(startMember);
      await until(() => first.every((member) => member.state.ready && holds(member).length > 0), 'A, B and C each hold partitions');

      // Writers: each owns the rows id % writers (no lock waits between writers), inserts them,
      // then updates 10 of them per transaction; a row's seq counts its writes in commit order.
      const clients = await Promise.all(
        Array.from({ length: writers }, async () => {
          const client = new pg.Client({ connectionString: db.url });
          await client.connect();
          return client;
        }),
      );
      const writeStart = Date.now();
      const writing = Promise.all(
        clients.map(async (client, writer) => {
          const own = Array.from({ length: rows / writers }, (_, index) => index * writers + writer);
          const choose = seeded(seed + 1 + writer);
          const inserted = await client.query(`INSERT INTO ${table} SELECT unnest($1::int[]), 0 RETURNING id, seq`, [own]);
          for (const row of inserted.rows) committed.push({ key: row.id as number, seq: row.seq as number });
          for (let round = 0; round < updatesPerWriter; round += 1) {
            await until(() => stopWriting || committed.length + batch <= gate, 'the writes pass the next gate', 60_000);
            if (stopWriting) return;
            const due = writeStart + ((round + 1) * writeMs) / updatesPerWriter;
            if (due > Date.now()) await sleep(due - Date.now());
            const ids = new Set<number>();
            while (ids.size < batch) ids.add(own[Math.floor(choose() * own.length)]!);
            const updated = await client.query(`UPDATE ${table} SET seq = seq + 1 WHERE id = ANY($1::int[]) RETURNING id, seq`, [[...ids]]);
            for (const row of updated.rows) committed.push({ key: row.id as number, seq: row.seq as number });
          }
        }),
      ).finally(() => Promise.all(clients.map((client) => client.end())));

      const kill = async (member: Member) => {
        member.state.killSentAt = micros();
        member.process.kill('SIGKILL');
        expect(await member.exited).toMatchObject({ signal: 'SIGKILL' });
      };
      const hasStarted = (member: Member) => readRecords(member).some((record) => record.kind === 'start');
      const faults = (async () => {
        const a = first[0]!;
        await until(() => committed.length >= killAAt, 'the writes reach the first kill');
        await kill(a);
        const a2 = startMember('A2');
        gate = Math.floor(0.6 * total);

        await until(() => committed.length >= joinDAt, 'the writes reach the join');
        const d = startMember('D');
        await until(() => holds(d).length > 0, 'D holds partitions');
        gate = Math.floor(0.85 * total);

        await until(() => committed.length >= killA2At, 'the writes reach the second kill');
        await until(() => holds(a2).length > 0 && hasStarted(a2), 'A2 holds partitions and works');
        await kill(a2);
        const a3 = startMember('A3');
        gate = Math.floor(0.95 * total);
        await until(() => holds(a3).length > 0, 'A3 holds partitions');
        gate = Number.POSITIVE_INFINITY;
      })();
      // Whichever fails first fails the test; the other's later failure is not an unhandled rejection.
      writing.catch(() => undefined);
      faults.catch(() => undefined);
      try {
        await Promise.all([writing, faults]);
      } finally {
        stopWriting = true;
      }
      const writtenMs = Date.now() - writeStart;
      expect(committed).toHaveLength(total);

      // Every committed change is processed to its end by someone.
      const wanted = new Set(committed.map(({ key, seq }) => `${key}#${seq}`));
      await until(
        () => {
          const done = new Set<string>();
          for (const member of members) for (const record of readRecords(member)) if (record.kind === 'end') done.add(`${record.key}#${record.seq}`);
          for (const id of wanted) if (!done.has(id)) return false;
          return true;
        },
        'the group processes every committed change',
        30_000,
        250,
      );
      const drainedMs = Date.now() - writeStart;

      // The four live members settle on a split of all the partitions, each with a share.
      const settled = () => {
        const now = live();
        const latest = now.map((member) => member.groups.at(-1));
        if (latest.some((report) => report === undefined || report.members !== now.length || report.holds.length === 0)) return false;
        const all = latest.flatMap((report) => report!.holds);
        return all.length === partitions && new Set(all).size === partitions && all.every((p) => p >= 0 && p < partitions);
      };
      await until(settled, 'the live members split every partition between them', 15_000);
      expect(live().map((member) => member.name).sort()).toEqual(['A3', 'B', 'C', 'D']);

      // A clean stop of every live member (each hands its partitions over).
      const stopping = live();
      for (const member of stopping) {
        member.state.stopping = true;
        member.process.send('stop');
      }
      for (const member of stopping) expect(await member.exited, `member ${member.name} stops cleanly`).toEqual({ code: 0, signal: null });
      const ranMs = Date.now() - begun;

      // ---- What the logs say.
      const checker = new GroupChecker(`consumer group: 3 + 1 members, SIGKILL x2 (seed ${seed})`, {
        leaseTimeout: leaseTimeout * 1_000,
        unsavedTail: unsavedTailMs * 1_000,
      });
      for (const { key, seq } of committed) checker.produce(key, seq);
      for (const member of members) {
        for (const record of readRecords(member)) checker.record(record);
        if (member.state.killSentAt !== undefined) checker.kill(member.name, member.state.killSentAt, member.state.exitedAt!);
        else checker.stopped(member.name, member.state.exitedAt!);
      }
      const counts = checker.counts();
      console.table([counts]);
      const processed = new Map(checker.instanceSummaries().map((summary) => [summary.instance, summary]));
      console.table(
        members.map((member) => ({
          member: member.name,
          pid: member.pid,
          started: processed.get(member.name)?.started ?? 0,
          finished: processed.get(member.name)?.finished ?? 0,
          'group reports': member.groups.length,
          'last holds': holds(member).join(','),
          end: member.state.killSentAt !== undefined ? 'SIGKILL' : 'stopped',
        })),
      );
      const kills = checker.killSummaries();
      console.table(
        kills.map((summary) => ({
          killed: summary.instance,
          'redone by others': summary.redone,
          'of which it had finished': summary.redoneFinished,
          'oldest redone (ms before kill)': Math.round(summary.oldestRedoneBeforeKill / 1_000),
          'kill to first redone (ms)': summary.firstRedoneAfterKill === undefined ? '-' : Math.round(summary.firstRedoneAfterKill / 1_000),
          'kill to exit seen (ms)': Math.round((summary.exitedAt - summary.sentAt) / 1_000),
        })),
      );
      console.log(
        `consumer-group: seed ${seed}, ${counts.produced} produced, ${counts.delivered} delivered, ${counts.duplicates} duplicates ` +
          `(${counts.unexplainedDuplicates} unexplained), ${counts.lost} lost, ${counts.outOfOrder} out of order, ` +
          `${counts.overlaps} overlaps (${counts.excusedOverlaps} excused), ${counts.kills} kills; ` +
          `written in ${writtenMs} ms, all processed at ${drainedMs} ms, ${ranMs} ms in all`,
      );
      if (checker.problems.length > 0) console.log('consumer-group problems:', checker.problems);

      expect(counts).toMatchObject({ produced: total, lost: 0, outOfOrder: 0, overlaps: 0, unexplainedDuplicates: 0, kills: 2 });
      expect(checker.problems).toEqual([]);
      expect(counts.delivered).toBe(counts.produced + counts.duplicates);
      // A killed member's unsaved work is taken up within the lease (at once on one host), plus slack for a loaded machine.
      for (const summary of kills) {
        if (summary.firstRedoneAfterKill !== undefined) expect(summary.firstRedoneAfterKill / 1_000).toBeLessThan(leaseTimeout + 3_000);
      }
      for (const member of members) expect(member.errors, `member ${member.name} stream errors`).toEqual([]);
      for (const member of members) {
        for (const report of member.groups) expect(report.partitions, `member ${member.name} partitions`).toBe(partitions);
      }
      // Every member took part: the late joiner and each restart got work.
      for (const name of ['A', 'B', 'C', 'A2', 'D']) expect(processed.get(name)?.finished ?? 0, `member ${name} processed changes`).toBeGreaterThan(0);

      // The table agrees (one write per insert and per update), and the clean stops saved everything.
      const { rows: sums } = await db.pool.query(`SELECT sum(seq + 1)::int AS writes FROM ${table}`);
      expect(sums[0].writes).toBe(total);
      const positions = (await tide.consumers()).filter((entry) => entry.name === consumer);
      expect(positions.length).toBeGreaterThan(0);
      for (const position of positions) expect(position.lagChanges).toBe(0);
      passed = true;
    },
  );
});
