import { filter, map, tap } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { processChanges } from '../../operators/processChanges.js';
import type { Change, GroupShare, StreamEvent, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE jobs (id int PRIMARY KEY, n int NOT NULL)');
  await db.pool.query('CREATE TABLE other (id int PRIMARY KEY)');
  const tide = await db.tide({ pruneInterval: 0 });
  await tide.watch('jobs');
  await tide.watch('other');
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
