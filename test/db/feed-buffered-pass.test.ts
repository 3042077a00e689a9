import { filter, firstValueFrom } from 'rxjs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { LogReader } from '../../src/log.js';
import { markProcessed, type Tide } from '../../src/index.js';
import { changeIds, createTestDatabase, eventually, followEvents, type TestDatabase } from '../helpers.js';

/**
 * A group partition that joins a feed AHEAD of its replay reads the gap while the feed's
 * new rows wait in `buffered`. A page the feed reads meanwhile with no row of this
 * partition only moves it by `passed(page.next)`, which returns early while `buffered`
 * is set, and nothing replays it after the gap: the partition's position stays at the
 * gap's end, behind rows of the other partitions, until the next page comes. With no
 * further writes, it is saved so: the group's lag stays above 0 after a clean stop
 * (the consumer-group fault test's last check: `lagChanges` 1, 2, 10 seen under load).
 *
 * Replay reads (checkPending false) are held at a gate AFTER they ran, so their snapshot
 * is older than what the feed reads in the meantime.
 */

let db: TestDatabase;
const realFetch = LogReader.prototype.fetch;
let gate: { promise: Promise<void>; release: () => void } | undefined;
let held = 0;

function arm(): void {
  let release!: () => void;
  const promise = new Promise<void>((resolve) => (release = resolve));
  gate = { promise, release };
}

beforeAll(async () => {
  db = await createTestDatabase();
  LogReader.prototype.fetch = async function (this: LogReader, ...args: Parameters<LogReader['fetch']>) {
    const page = await realFetch.apply(this, args);
    const current = gate;
    if (args[3] !== true && current) {
      held += 1;
      await current.promise;
    }
    return page;
  };
});
afterAll(async () => {
  LogReader.prototype.fetch = realFetch;
  gate?.release();
  await db?.drop();
});

const follow = followEvents;
const ids = changeIds;

it('a partition that joined a feed ahead of it is moved past the pages the feed read during its gap read', async () => {
  await db.pool.query(`CREATE TABLE buffered_pass (id int PRIMARY KEY)`);
  const tide: Tide = await db.tide({ pruneInterval: 0, pollInterval: 60_000 });
  await tide.watch('buffered_pass');
  const partitionOf = async (id: number) =>
    (await db.pool.query(`SELECT (hashtext($1::text) & 2147483647) % 2 AS part`, [id])).rows[0].part as number;
  let inPartition1 = 1;
  while ((await partitionOf(inPartition1)) !== 1) inPartition1 += 1;

  const bystander = follow(tide.events$('buffered_pass'));
  await bystander.caughtUp;

  // The member's partitions replay to a snapshot C; their reads are held there.
  arm();
  const member = follow(tide.events$('buffered_pass', { consumer: 'bp', group: { partitions: 2 }, from: 'beginning' }));
  await eventually(() => held >= 1, 'the partitions read their first page');
  // The feed moves ahead of C.
  await db.pool.query(`INSERT INTO buffered_pass VALUES (1000)`);
  await eventually(() => ids(bystander.changes).includes(1000), 'the feed reads row 1000');
  // The partitions join the feed ahead of them and read the gap: hold that read too.
  const first = gate!;
  arm();
  const heldBefore = held;
  first.release();
  await eventually(() => held > heldBefore, 'the partitions read the gap up to the feed');
  // Meanwhile the feed reads a page with a row of partition 1 only.
  await db.pool.query(`INSERT INTO buffered_pass VALUES ($1)`, [inPartition1]);
  await eventually(() => ids(bystander.changes).includes(inPartition1), `the feed reads row ${inPartition1}`);
  gate!.release();
  gate = undefined;
  await firstValueFrom(
    tide.status$.pipe(filter((status) => ['bp/0', 'bp/1'].every((name) => status.streams.some((stream) => stream.consumer === name && stream.phase === 'live')))),
  );
  await eventually(() => ids(member.changes).includes(inPartition1) && ids(member.changes).includes(1000), 'the member gets both rows');
  for (const change of member.changes) markProcessed(change);
  // A clean stop saves each partition's position.
  member.subscription.unsubscribe();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const { rows } = await db.pool.query(`SELECT name, base::text, upto::text, after_id FROM pgtide.consumers WHERE group_name = 'bp' ORDER BY part`);
  const group = (await tide.consumers()).find((entry) => entry.name === 'bp');
  expect(group?.lagChanges, `partition positions: ${JSON.stringify(rows)}`).toBe(0);
  bystander.subscription.unsubscribe();
});
