// One process of the consumer-group row (bench/scenarios/groups.ts): a member of a
// consumer group, `changes$({ consumer, group: true })` -> processChanges(handler,
// { concurrency }), or the one-process baseline, a plain consumer -> mergeMap(handler,
// concurrency) -> acknowledge(). The handler waits `handlerMs` per change (I/O-bound work).
// Connects, says 'ready', subscribes on 'go', reports its handled count every
// `progressMs` ('progress') and stops on 'stop'; the parent decides when the consumer is done.
import { mergeMap, type Observable } from 'rxjs';
import { acknowledge, processChanges, type Change, type ChangesOptions } from '../../src/index.js';
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface GroupMemberArgs {
  readonly url: string;
  readonly table: string;
  readonly consumer: string;
  readonly mode: 'group' | 'mergeMap';
  /** processChanges concurrency of this member (group), or mergeMap concurrency (mergeMap). */
  readonly concurrency: number;
  readonly handlerMs: number;
  /** Partitions of the group; undefined: the library's default. */
  readonly partitions?: number;
  readonly progressMs: number;
}

export interface GroupMemberResult {
  /** Changes whose handler finished (and that were marked processed) in this process. */
  readonly handled: number;
  /** nowMs() of 'go', of the first handler call and of the last handler completion (0: none). */
  readonly goAt: number;
  readonly firstAt: number;
  readonly lastAt: number;
  readonly maxRssMB: number;
  /** CPU (user + system) from go to the last handled change. */
  readonly cpuMs: number;
}

export default async function groupMember(args: GroupMemberArgs, channel: Channel): Promise<GroupMemberResult> {
  const tide = await connectTide(args.url);
  channel.send('ready');
  await channel.receive('go');
  const goAt = nowMs();
  const cpuAtGo = process.cpuUsage();
  let cpuAtLast = cpuAtGo;
  let handled = 0;
  let firstAt = 0;
  let lastAt = 0;
  const started = () => {
    if (firstAt === 0) firstAt = nowMs();
  };
  const done = () => {
    handled += 1;
    lastAt = nowMs();
    cpuAtLast = process.cpuUsage();
  };
  let source: Observable<Change>;
  if (args.mode === 'group') {
    const options: ChangesOptions = {
      consumer: args.consumer,
      from: 'beginning',
      group: args.partitions === undefined ? true : { partitions: args.partitions },
    };
    source = tide.changes$(args.table, options).pipe(
      processChanges(
        async () => {
          started();
          await sleep(args.handlerMs);
        },
        { concurrency: args.concurrency },
      ),
    );
  } else {
    source = tide.changes$(args.table, { consumer: args.consumer, from: 'beginning' }).pipe(
      mergeMap(async (change) => {
        started();
        await sleep(args.handlerMs);
        return change;
      }, args.concurrency),
      acknowledge(),
    );
  }
  let fail!: (error: unknown) => void;
  const failed = new Promise<never>((_resolve, reject) => (fail = reject));
  const subscription = source.subscribe({ next: done, error: (error: unknown) => fail(error) });
  const progress = setInterval(() => channel.send('progress', handled), args.progressMs);
  try {
    await Promise.race([channel.receive('stop'), failed]);
  } finally {
    clearInterval(progress);
    subscription.unsubscribe();
    await tide.close();
  }
  const cpuMs = (cpuAtLast.user + cpuAtLast.system - cpuAtGo.user - cpuAtGo.system) / 1000;
  return { handled, goAt, firstAt, lastAt, cpuMs, maxRssMB: process.resourceUsage().maxRSS / 1024 };
}
