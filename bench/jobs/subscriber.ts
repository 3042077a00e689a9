// One subscriber counting the inserts of one table as they arrive: pgtide's changes$ or
// postgres.js's sql.subscribe (logical replication, pgoutput). The parent writes; this
// process only receives, so its CPU is its own.
import postgres from 'postgres';
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface SubscriberArgs {
  readonly url: string;
  readonly system: 'pgtide' | 'peer';
  readonly table: string;
  /** Publication for the peer. */
  readonly publication: string;
  /** Record the arrival time of every n-th change. */
  readonly every: number;
}

export interface SubscriberResult {
  readonly count: number;
  /** [changes received, ms] pairs, every `every` changes, plus the last. */
  readonly arrivals: Array<[number, number]>;
  readonly first: number;
  readonly last: number;
  readonly maxRssMB: number;
}

export default async function subscriber(args: SubscriberArgs, channel: Channel): Promise<SubscriberResult> {
  let count = 0;
  let first = 0;
  let last = 0;
  const arrivals: Array<[number, number]> = [];
  const arrive = () => {
    count += 1;
    last = nowMs();
    if (count === 1) first = last;
    if (count % args.every === 0) arrivals.push([count, last]);
  };
  let stop: () => Promise<void>;
  if (args.system === 'pgtide') {
    const tide = await connectTide(args.url);
    // One subscription both counts and reports caught-up (a second one would be a second stream).
    let markCaughtUp!: () => void;
    const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
    const subscription = tide.events$(args.table).subscribe((event) => {
      if (event.kind === 'change') arrive();
      else markCaughtUp();
    });
    await caughtUp;
    stop = async () => {
      subscription.unsubscribe();
      await tide.close();
    };
  } else {
    const sql = postgres(args.url, { publications: args.publication, max: 1, onnotice: () => undefined });
    // Pitfall: a pattern must name the schema ('insert:public.t'); 'insert:t' matches nothing.
    const { unsubscribe } = await sql.subscribe(`insert:public.${args.table}`, () => arrive());
    stop = async () => {
      unsubscribe();
      await sql.end({ timeout: 1 });
    };
  }
  channel.send('ready');
  const { total } = await channel.receive<{ total: number }>('expect');
  // Wait for everything, giving up only when nothing has arrived for 30 s.
  let seen = count;
  let progressAt = nowMs();
  while (count < total) {
    await sleep(2);
    if (count !== seen) {
      seen = count;
      progressAt = nowMs();
    } else if (nowMs() - progressAt > 30_000) {
      break;
    }
  }
  arrivals.push([count, last]);
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  await stop();
  return { count, arrivals, first, last, maxRssMB };
}
