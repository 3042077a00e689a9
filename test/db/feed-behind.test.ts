import pg from 'pg';
import { filter, firstValueFrom, type Observable, type Subscription } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LogReader } from '../../src/log.js';
import { markProcessed, type StreamEvent, type Tide } from '../../src/index.js';
import { changeIds, createTestDatabase, eventually, followEvents, type FollowedEvents, type TestDatabase } from '../helpers.js';

/**
 * A durable stream that replays past the shared feed's position joins the feed with
 * `deliveredUpTo` (the feed hands it rows it delivered already, which it drops). The
 * feed's next batch can hold, in id order, a row the stream had not seen (its
 * transaction committed after the stream's replay snapshot) before a row it delivered
 * in the replay (an earlier commit with a larger id). Delivering the first, the stream
 * took the feed's position for its own: one that covers less than it delivered. So
 *
 *  1. a slow consumer leaving the feed (maxInFlight) replays from there and delivers the
 *     second row again, in the same process, without any fault;
 *  2. that position is saved as processed: a clean stop (or a group partition's drain
 *     before it is handed over) has the next reader deliver the second row again.
 *
 * The feed's reads (the live ones, `checkPending`) are held at a gate so the order of
 * snapshots is fixed: feed F < replay C < feed F2, with T1 (smaller id) committed
 * between C and F2 and T2 (larger id) before C.
 */

let db: TestDatabase;
let release: (() => void) | undefined;
let gate: Promise<void> | undefined;
const realFetch = LogReader.prototype.fetch;

function holdFeedReads(): void {
  gate = new Promise<void>((resolve) => (release = resolve));
}
function releaseFeedReads(): void {
  gate = undefined;
  release?.();
}

beforeAll(async () => {
  db = await createTestDatabase();
  LogReader.prototype.fetch = async function (this: LogReader, ...args: Parameters<LogReader['fetch']>) {
    // Only the shared feed's reads ask whether writers are still committing.
    if (args[3] === true && gate) await gate;
    return realFetch.apply(this, args);
  };
});
afterAll(async () => {
  LogReader.prototype.fetch = realFetch;
  releaseFeedReads();
  await db?.drop();
});

const subscriptions: Subscription[] = [];
afterEach(() => {
  releaseFeedReads();
  for (const subscription of subscriptions.splice(0)) subscription.unsubscribe();
});

function follow(events: Observable<StreamEvent<unknown>>): FollowedEvents {
  const followed = followEvents(events);
  subscriptions.push(followed.subscription);
  return followed;
}

const ids = changeIds;

/**
 * Sets up the race: returns the Tide, the durable stream (caught up, joined to a feed
 * behind it) and a function that commits T1 and lets the feed read.
 */
async function feedBehindDurableStream(table: string, consumer: string, maxInFlight: number, group?: { partitions: number }) {
  await db.pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY)`);
  const tide: Tide = await db.tide({ pruneInterval: 0, pollInterval: 60_000 });
  await tide.watch(table);
  // A live bystander keeps the table's feed running.
  const bystander = follow(tide.events$(table));
  await bystander.caughtUp;
  await db.pool.query(`INSERT INTO ${table} VALUES (0)`);
  await eventually(() => ids(bystander.changes).includes(0), 'the feed reads row 0');

  // The feed stays at F (after row 0) from here.
  holdFeedReads();
  const t1 = new pg.Client({ connectionString: db.url });
  await t1.connect();
  await t1.query('BEGIN');
  await t1.query(`INSERT INTO ${table} VALUES (1)`); // T1: the smaller log id, committed last
  await db.pool.query(`INSERT INTO ${table} VALUES (2)`); // T2: the larger log id, committed now

  // The durable stream replays to a snapshot C that sees T2, not T1, and joins the feed behind it.
  const durable = follow(tide.events$(table, { consumer, from: 'beginning', maxInFlight, ...(group ? { group } : {}) }));
  if (group) {
    // A member holding nothing says it caught up at once: wait for its partition instead.
    await firstValueFrom(tide.status$.pipe(filter((status) => status.streams.some((stream) => stream.consumer === `${consumer}/0` && stream.phase === 'live'))));
  } else {
    await durable.caughtUp;
  }
  expect(ids(durable.changes)).toEqual([0, 2]);

  const commitT1AndRead = async () => {
    await t1.query('COMMIT');
    await t1.end();
    releaseFeedReads();
    // The feed reads T1 and T2 (in id order: row 1, then row 2, which the stream drops).
    await eventually(() => ids(bystander.changes).includes(1) && ids(bystander.changes).includes(2), 'the feed reads T1 and T2');
  };
  return { tide, durable, commitT1AndRead };
}

describe('a durable stream joining a feed that is behind it', () => {
  // The slow consumer: rows 0 and 2 in flight after the replay, row 1 from the feed fills
  // the window (3), so it leaves the feed and reads from its cursor again. The group: one
  // partition, whose window is the member's (3), held by the member alone.
  it.each([
    ['a slow consumer leaving the feed', 'behind_slow', 'slow', undefined],
    ['a consumer group partition that leaves the feed (its window is full)', 'behind_group', 'grp', { partitions: 1 }],
  ] as const)('%s does not deliver again what its replay delivered', async (_, table, consumer, group) => {
    const { durable, commitT1AndRead } = await feedBehindDurableStream(table, consumer, 3, group);
    await commitT1AndRead();
    await eventually(() => ids(durable.changes).includes(1), 'the stream gets row 1 from the feed');
    // Make room: the stream left the feed and reads from its cursor again.
    for (const change of durable.changes) markProcessed(change);
    await db.pool.query(`INSERT INTO ${table} VALUES (3)`);
    await eventually(() => ids(durable.changes).includes(3), 'the stream gets row 3');
    for (const change of durable.changes) markProcessed(change);
    expect(ids(durable.changes)).toEqual([0, 2, 1, 3]);
  });

  it('the position saved after the feed handed over a new row covers what the replay delivered', async () => {
    const { tide, durable, commitT1AndRead } = await feedBehindDurableStream('behind_saved', 'saved', 1000);
    await commitT1AndRead();
    await eventually(() => ids(durable.changes).includes(1), 'the durable stream gets row 1 from the feed');
    expect(ids(durable.changes)).toEqual([0, 2, 1]);
    for (const change of durable.changes) markProcessed(change);
    // A clean stop saves the processed position.
    durable.subscription.unsubscribe();
    await eventually(async () => (await tide.consumers()).find((entry) => entry.name === 'saved')?.lagChanges === 0, 'the position is saved', 5_000).catch(
      () => undefined,
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    // The next reader of the consumer starts after everything acknowledged.
    const next = follow(tide.events$('behind_saved', { consumer: 'saved' }));
    await next.caughtUp;
    await db.pool.query(`INSERT INTO behind_saved VALUES (3)`);
    await eventually(() => ids(next.changes).includes(3), 'the next reader gets row 3');
    expect(ids(next.changes)).toEqual([3]);
  });
});
