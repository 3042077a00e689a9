// The receiving side of the latency rows whose writers run in the parent (latency-4w,
// latency-blocked): one changes$ stream of one table, open for the whole job, recording
// when each change arrives by row id. Both processes read the same monotonic clock
// (CLOCK_MONOTONIC, see lib/stats.ts), so the parent subtracts its send times.
//
// Protocol: args -> 'ready' once the stream is caught up; then 'command' messages (one
// message type, so that the mailbox keeps their order): wait { to, timeoutMs } -> 'waited'
// { complete } (every id up to `to` arrived, or the timeout passed); collect { from, to }
// -> 'arrivals' (a Float64Array, NaN where nothing arrived); stop ends the job.
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface ArrivalsArgs {
  readonly url: string;
  readonly table: string;
  /** Ids are 1..maxId. */
  readonly maxId: number;
}

export type Command =
  | { readonly kind: 'wait'; readonly to: number; readonly timeoutMs: number }
  | { readonly kind: 'collect'; readonly from: number; readonly to: number }
  | { readonly kind: 'stop' };

export interface ArrivalsResult {
  readonly received: number;
  /** Changes that arrived twice (must be 0). */
  readonly duplicates: number;
  readonly maxRssMB: number;
}

export default async function arrivals(args: ArrivalsArgs, channel: Channel): Promise<ArrivalsResult> {
  const arrivedAt = new Float64Array(args.maxId + 1).fill(Number.NaN);
  let received = 0;
  let duplicates = 0;
  // Every id below `contiguous` has arrived.
  let contiguous = 1;
  const tide = await connectTide(args.url);
  // One subscription both records and reports caught-up (a second one would be a second stream).
  let markCaughtUp!: () => void;
  const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
  const subscription = tide.events$<{ id: number }>(args.table).subscribe({
    next: (event) => {
      if (event.kind !== 'change') {
        markCaughtUp();
        return;
      }
      const at = nowMs();
      const id = Number(event.change.key.id);
      if (!Number.isNaN(arrivedAt[id]!)) duplicates += 1;
      else arrivedAt[id] = at;
      received += 1;
    },
    // The stream failing fails the job (the parent's receive rejects with this text).
    error: (error: unknown) => {
      process.send!({ type: 'error', data: `changes$ failed: ${String(error)}` }, () => process.exit(1));
    },
  });
  await caughtUp;
  channel.send('ready');

  const commands = async (): Promise<void> => {
    for (;;) {
      const command = await channel.receive<Command>('command');
      if (command.kind === 'stop') return;
      if (command.kind === 'wait') {
        const deadline = nowMs() + command.timeoutMs;
        for (;;) {
          while (contiguous <= args.maxId && !Number.isNaN(arrivedAt[contiguous]!)) contiguous += 1;
          if (contiguous > command.to || nowMs() >= deadline) break;
          await sleep(2);
        }
        channel.send('waited', { complete: contiguous > command.to });
      } else {
        channel.send('arrivals', arrivedAt.slice(command.from, command.to + 1));
      }
    }
  };
  await commands();
  subscription.unsubscribe();
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  await tide.close();
  return { received, duplicates, maxRssMB };
}
