import pg from 'pg';
import { filter, firstValueFrom, map, tap } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { acknowledge } from '../../operators/acknowledge.js';
import { processChanges } from '../../operators/processChanges.js';
import { connect, type Change, type GroupShare, type StreamEvent, type Tide } from '../../src/index.js';
import { createTestDatabase, eventually, poolWithQueryHook, quietLogger, type TestDatabase } from '../helpers.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE jobs (id int PRIMARY KEY, n int NOT NULL)');
  await db.pool.query('CREATE TABLE other (id int PRIMARY KEY)');
  await db.pool.query('CREATE TABLE flaky (id int PRIMARY KEY)');
  const tide = await db.tide({ pruneInterval: 0 });
  await tide.watch('jobs');
  await tide.watch('other');
  await tide.watch('flaky');
});

afterAll(async () => {
  await db.drop();
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Handled {
  readonly member: string;
  readonly id: number;
  readonly n: number;
  readonly start: number;
  end?: number;
}

/** One group member in a Tide of its own, as a process would run it: its handler logs start and end of each change. */
async function member(name: string, group: string, log: Handled[], options: { partitions?: number; handlerMs?: number } = {}) {
  const tide = await db.tide({ pruneInterval: 0, acknowledgeFlushDelay: 10, leaseTimeout: 1000 });
  const shares: GroupShare[] = [];
  let failure: unknown;
  const subscription = tide
    .events$<{ id: number; n: number }>('jobs', {
      consumer: group,
      group: options.partitions === undefined ? true : { partitions: options.partitions },
      from: 'beginning',
    })
    .pipe(
      tap((event: StreamEvent<{ id: number; n: number }>) => {
        if (event.kind === 'group') shares.push(event);
      }),
      filter((event): event is Extract<typeof event, { kind: 'change' }> => event.kind === 'change'),
      map((event) => event.change),
      processChanges(
        async (change: Change<{ id: number; n: number }>) => {
          const entry: Handled = { member: name, id: change.new!.id, n: change.new!.n, start: performance.now() };
          log.push(entry);
          await sleep(options.handlerMs ?? 1);
          entry.end = performance.now();
        },
        { concurrency: 4 },
      ),
    )
    .subscribe({ error: (error: unknown) => (failure = error) });
  return { tide, shares, failure: () => failure, stop: () => subscription.unsubscribe() };
}

/** Per row, whether its changes were handled in n order (first handling of each), and no two at once. */
function check(log: readonly Handled[], expected: ReadonlyMap<number, number>) {
  const byRow = new Map<number, Handled[]>();
  for (const entry of log) {
    let list = byRow.get(entry.id);
    if (!list) byRow.set(entry.id, (list = []));
    list.push(entry);
  }
  let lost = 0;
  let outOfOrder = 0;
  let overlaps = 0;
  for (const [id, last] of expected) {
    const list = (byRow.get(id) ?? []).slice().sort((a, b) => a.start - b.start);
    const seen = new Set<number>();
    let max = 0;
    for (const entry of list) {
      if (!seen.has(entry.n)) {
        if (entry.n < max) outOfOrder += 1;
        max = Math.max(max, entry.n);
        seen.add(entry.n);
      }
    }
    for (let n = 1; n <= last; n += 1) if (!seen.has(n)) lost += 1;
    for (let index = 1; index < list.length; index += 1) {
      if ((list[index - 1]!.end ?? Infinity) > list[index]!.start) overlaps += 1;
    }
  }
  return { lost, outOfOrder, overlaps, handled: log.length };
}

/**
 * A Tide on a pool of its own, where `fault` may answer a read of a consumer's position
 * (the first thing a partition's stream reads) instead of the server.
 */
async function tideWithFault(fault: (consumer: string) => Promise<never> | undefined) {
  const pool = poolWithQueryHook(db.url, (text, values) =>
    /expired_at, group_name\s+FROM \S+\.consumers WHERE name = \$1/.test(text) ? fault(values![0] as string) : undefined,
  );
  const tide = await connect({ pool, logger: quietLogger, pruneInterval: 0, acknowledgeFlushDelay: 10 });
  return { tide, close: async () => (await tide.close(), await pool.end()) };
}

/** A member of a 4-partition group from the beginning of `table`, acknowledging each change. */
function groupMember(tide: Tide, table: string, group: string) {
  const ids: number[] = [];
  const shares: number[][] = [];
  let failure: unknown;
  const subscription = tide
    .events$<{ id: number }>(table, { consumer: group, group: { partitions: 4 }, from: 'beginning' })
    .pipe(
      tap((event) => {
        if (event.kind === 'group') shares.push([...event.holds]);
      }),
      filter((event) => event.kind === 'change'),
      map((event) => event.change),
      tap((change) => ids.push(change.key['id'] as number)),
      acknowledge(),
    )
    .subscribe({ error: (error: unknown) => (failure = error) });
  return { ids, shares, failure: () => failure, stop: () => subscription.unsubscribe() };
}

/** How many streams of `tide` read for `consumer` (a partition's consumer name). */
async function readersOf(tide: Tide, consumer: string): Promise<number> {
  return (await firstValueFrom(tide.status$)).streams.filter((stream) => stream.consumer === consumer).length;
}

async function lagOf(tide: Tide, group: string) {
  return (await tide.consumers()).find((info) => info.name === group);
}

describe('consumer groups', () => {
  it('split the rows between members, each row in order on one member at a time, through joins and leaves', async () => {
    const log: Handled[] = [];
    const expected = new Map<number, number>();
    await db.pool.query('INSERT INTO jobs SELECT g, 1 FROM generate_series(1, 40) g');
    for (let id = 1; id <= 40; id += 1) expected.set(id, 1);
    const a = await member('a', 'workers', log, { partitions: 8 });
    await eventually(() => a.shares.at(-1)?.holds.length === 8, 'a holds every partition');
    const b = await member('b', 'workers', log, { partitions: 8 });
    await eventually(() => a.shares.at(-1)?.holds.length === 4 && b.shares.at(-1)?.holds.length === 4, 'a and b hold 4 each');
    expect(a.shares.at(-1)!.members).toBe(2);
    expect([...a.shares.at(-1)!.holds, ...b.shares.at(-1)!.holds].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const c = await member('c', 'workers', log);
    for (let round = 2; round <= 10; round += 1) {
      await db.pool.query('UPDATE jobs SET n = n + 1');
      for (let id = 1; id <= 40; id += 1) expected.set(id, round);
      if (round === 5) {
        // A member starts its partitions' reads one by one: let a have worked before it leaves.
        await eventually(() => log.some((entry) => entry.member === 'a'), 'a handled changes before it leaves');
        a.stop();
      }
      await sleep(30);
    }
    await eventually(async () => (await lagOf(b.tide, 'workers'))?.lagChanges === 0, 'the group acknowledged everything');
    const result = check(log, expected);
    console.table([result]);
    expect(result).toMatchObject({ lost: 0, outOfOrder: 0, overlaps: 0 });
    await eventually(() => b.shares.at(-1)?.holds.length === 4 && c.shares.at(-1)?.holds.length === 4, 'b and c share after a left');
    expect(b.failure()).toBeUndefined();
    expect(c.failure()).toBeUndefined();
    const handledBy = new Set(log.map((entry) => entry.member));
    expect(handledBy).toEqual(new Set(['a', 'b', 'c']));
    b.stop();
    c.stop();
  });

  it('shows members, what each holds and its lag in consumers()', async () => {
    const log: Handled[] = [];
    const a = await member('a', 'reporting', log, { partitions: 4 });
    const b = await member('b', 'reporting', log, { partitions: 4 });
    await eventually(() => a.shares.at(-1)?.holds.length === 2 && b.shares.at(-1)?.holds.length === 2, 'two each');
    await eventually(async () => (await lagOf(a.tide, 'reporting'))?.lagChanges === 0, 'caught up');
    const info = await lagOf(a.tide, 'reporting');
    expect(info?.table).toBe('public.jobs');
    expect(info?.group?.partitions).toBe(4);
    expect(info?.group?.members.map((m) => m.holds).sort()).toEqual([[0, 1], [2, 3]]);
    expect(info?.group?.members.every((m) => m.lagChanges === 0)).toBe(true);
    expect((await a.tide.consumers()).some((consumer) => consumer.name.startsWith('reporting/'))).toBe(false);
    a.stop();
    b.stop();
  });

  it('delivers a retried dead letter through a member, validated by the group\'s schema like every change', async () => {
    await db.pool.query('CREATE TABLE accounts (id int8 PRIMARY KEY, balance int8 NOT NULL)');
    const tide = await db.tide({ pruneInterval: 0, acknowledgeFlushDelay: 10 });
    const schema = z.object({ id: z.coerce.number(), balance: z.coerce.number() });
    const seen: Array<{ id: unknown; balance: unknown }> = [];
    let failing = true;
    const member = tide
      .changes$('accounts', { consumer: 'ledger', group: { partitions: 2 }, schema })
      .pipe(
        processChanges(
          (change) => {
            seen.push(change.new!);
            return failing ? Promise.reject(new Error('ledger closed')) : Promise.resolve();
          },
          { attempts: 1 },
        ),
      )
      .subscribe();
    await sleep(500);
    await db.pool.query('INSERT INTO accounts VALUES (1, 100)');
    await eventually(async () => (await tide.deadLetters('ledger')).length === 1, 'a dead letter');
    failing = false;
    expect(await tide.retryDeadLetters('ledger')).toBe(1);
    await eventually(async () => (await tide.deadLetters('ledger')).length === 0, 'retried and removed');
    // int8 comes from pg as a string; the schema makes it a number, for the retry too.
    expect(seen).toEqual([{ id: 1, balance: 100 }, { id: 1, balance: 100 }]);
    member.unsubscribe();
  });

  it('a partition whose stream failed to read its position keeps it: no second reader, no hole in the share, every row once', async () => {
    await db.pool.query('INSERT INTO flaky SELECT g FROM generate_series(1, 200) g');
    let failed = false;
    const { tide, close } = await tideWithFault((consumer) => {
      if (consumer !== 'flaky-start/1' || failed) return undefined;
      failed = true;
      return Promise.reject(new Error('Connection terminated unexpectedly'));
    });
    try {
      const member = groupMember(tide, 'flaky', 'flaky-start');
      await eventually(() => new Set(member.ids).size === 200, 'every row delivered');
      await db.pool.query('INSERT INTO flaky SELECT g FROM generate_series(201, 300) g');
      await eventually(() => new Set(member.ids).size === 300, 'the new rows delivered');
      await sleep(300);
      expect(failed).toBe(true);
      expect(member.failure()).toBeUndefined();
      // The stream retried on the partition: the member never let it go (for a second stream to take).
      expect(member.shares.filter((holds) => holds.length > 0)).toEqual([[0, 1, 2, 3]]);
      expect(await readersOf(tide, 'flaky-start/1')).toBe(1);
      expect(member.ids).toHaveLength(300);
      member.stop();
    } finally {
      await close();
    }
  });

  it('a stream of a lost member session whose read fails afterwards does not let go of the partition the next session holds', async () => {
    await db.pool.query('INSERT INTO flaky SELECT g FROM generate_series(1001, 1200) g ON CONFLICT DO NOTHING');
    const rows = async () => (await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM flaky')).rows[0]!.n;
    const stored = await rows();
    let fail: ((error: Error) => void) | undefined;
    const { tide, close } = await tideWithFault((consumer) => {
      if (consumer !== 'flaky-lost/1' || fail) return undefined;
      return new Promise<never>((_, reject) => (fail = reject));
    });
    try {
      const member = groupMember(tide, 'flaky', 'flaky-lost');
      await eventually(() => fail !== undefined, "partition 1's stream reads its position");
      // The member's session ends (as in a server restart): it joins again and takes every partition on a new session.
      await db.pool.query(`SELECT pg_terminate_backend(pid) FROM pgtide.group_members WHERE group_name = 'flaky-lost'`);
      await eventually(() => member.shares.filter((holds) => holds.length === 4).length === 2, 'every partition held again');
      await eventually(() => new Set(member.ids).size === stored, 'every row delivered');
      // Now the first session's partition-1 stream, ended with it, sees its read fail.
      fail!(new Error('Connection terminated unexpectedly'));
      await db.pool.query('INSERT INTO flaky SELECT g FROM generate_series(2001, 2100) g');
      await eventually(() => new Set(member.ids).size === stored + 100, 'the new rows delivered');
      await sleep(300);
      expect(member.failure()).toBeUndefined();
      expect(member.shares.filter((holds) => holds.length > 0)).toEqual([[0, 1, 2, 3], [0, 1, 2, 3]]);
      expect(await readersOf(tide, 'flaky-lost/1')).toBe(1);
      member.stop();
    } finally {
      await close();
    }
  });

  it('a partition stream whose read failed as its member lost its session does not read on without the partition, losing its rows', async () => {
    await db.pool.query('INSERT INTO flaky SELECT g FROM generate_series(3001, 3200) g');
    const blocker = new pg.Client({ connectionString: db.url });
    await blocker.connect();
    let failed = false;
    const { tide, close } = await tideWithFault((consumer) => {
      if (consumer !== 'flaky-restart/1' || failed) return undefined;
      failed = true;
      // As in a server restart: the read fails, the member's session ends, and its next
      // session takes a while to join (here: its row in group_members is locked).
      setTimeout(async () => {
        await blocker.query('BEGIN');
        await blocker.query(`SELECT FROM pgtide.group_members WHERE group_name = 'flaky-restart' FOR UPDATE`);
        await db.pool.query(`SELECT pg_terminate_backend(pid) FROM pgtide.group_members WHERE group_name = 'flaky-restart'`);
        setTimeout(() => void blocker.query('COMMIT'), 700);
      });
      return Promise.reject(new Error('Connection terminated unexpectedly'));
    });
    try {
      const member = groupMember(tide, 'flaky', 'flaky-restart');
      await eventually(() => member.shares.filter((holds) => holds.length === 4).length === 2, 'every partition held again');
      const stored = (await db.pool.query<{ id: number }>('SELECT id FROM flaky')).rows.map((row) => row.id);
      await eventually(() => stored.every((id) => member.ids.includes(id)), 'every row delivered').catch(() => undefined);
      await sleep(300);
      const delivered = new Set(member.ids);
      expect({ failure: member.failure(), lost: stored.filter((id) => !delivered.has(id)).length }).toEqual({ failure: undefined, lost: 0 });
      expect(await readersOf(tide, 'flaky-restart/1')).toBe(1);
      member.stop();
    } finally {
      await blocker.end();
      await close();
    }
  });

  it('refuses a partition count other than the group\'s, a group of another table, and names plain consumers have', async () => {
    const tide = await db.tide({ pruneInterval: 0 });
    const errorOf = (events: ReturnType<Tide['events$']>) =>
      new Promise((resolve) => events.subscribe({ error: resolve, complete: () => resolve(undefined) }));
    await expect(errorOf(tide.events$('jobs', { consumer: 'reporting', group: { partitions: 5 } }))).resolves.toMatchObject({
      code: 'CONSUMER_GROUP_MISMATCH',
    });
    await expect(errorOf(tide.events$('other', { consumer: 'reporting', group: true }))).resolves.toMatchObject({
      code: 'CONSUMER_TABLE_MISMATCH',
    });
    await expect(errorOf(tide.events$('jobs', { consumer: 'reporting' }))).resolves.toMatchObject({ code: 'CONSUMER_GROUP_MISMATCH' });
    await expect(errorOf(tide.events$('jobs', { consumer: 'reporting/1' }))).resolves.toMatchObject({ code: 'CONSUMER_GROUP_MISMATCH' });
    const plain = tide.changes$('jobs', { consumer: 'plain' }).subscribe();
    await eventually(async () => (await tide.consumers()).some((consumer) => consumer.name === 'plain'), 'plain registered');
    plain.unsubscribe();
    await expect(errorOf(tide.events$('jobs', { consumer: 'plain', group: true }))).resolves.toMatchObject({
      code: 'CONSUMER_GROUP_MISMATCH',
    });
    expect(() => tide.changes$('jobs', { group: true })).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    expect(() => tide.changes$('jobs', { consumer: 'x', group: true, rowId: 1 })).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    expect(await tide.dropConsumer('reporting')).toBe(true);
    expect((await tide.consumers()).some((consumer) => consumer.name.startsWith('reporting'))).toBe(false);
  });
});
