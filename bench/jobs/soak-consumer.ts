// The durable consumer of the soak row (bench/scenarios/soak.ts), in its own process as in
// production: `events$(table, { consumer })` -> `acknowledge()`, on a Tide connected with
// the library's defaults, background prune included (bench/lib/db.ts connectTide turns
// prune off for the other rows; the soak is about what prune leaves behind, so it must run).
//
// The parent writes rows with ids 1, 2, 3, ... and stamps, on the machine's monotonic
// clock (lib/stats.ts nowMs, CLOCK_MONOTONIC, the same in every process), when the
// INSERT of every `sampleEvery`-th id returned; this job stamps when those ids are
// emitted, and the parent subtracts.
//
// Protocol: args -> 'ready' once the stream is caught up; then 'command' messages (one
// message type, so that the mailbox keeps their order): report -> 'report' (a
// SoakReport: counts so far and the sampled arrivals since the previous report);
// wait { count, timeoutMs } -> 'waited' (a SoakReport once `count` changes arrived or the
// timeout passed); stop ends the job (closing the Tide saves the consumer's position).
import { filter, map, tap } from 'rxjs';
import { acknowledge, connect, type StreamEvent } from '../../src/index.js';
import type { Channel } from '../worker.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface SoakConsumerArgs {
  readonly url: string;
  readonly table: string;
  readonly consumer: string;
  /** Ids divisible by this are the latency sample. */
  readonly sampleEvery: number;
}

export type SoakCommand =
  | { readonly kind: 'report' }
  | { readonly kind: 'wait'; readonly count: number; readonly timeoutMs: number }
  | { readonly kind: 'stop' };

export interface SoakReport {
  /** When this report was taken (nowMs, shared clock). */
  readonly at: number;
  /** Distinct changes that came out of acknowledge() so far. */
  readonly received: number;
  /** Changes that came out a second time (a consumer stream must deliver once while it runs). */
  readonly duplicates: number;
  /** Sampled arrivals since the previous report, flat: id, emittedAt, id, emittedAt, ... */
  readonly arrivals: Float64Array;
  readonly rssMB: number;
  /** Warnings and errors the Tide logged since the previous report (a failed background prune shows here). */
  readonly logged: readonly string[];
}

export interface SoakConsumerResult {
  readonly received: number;
  readonly duplicates: number;
  readonly maxRssMB: number;
}

type ChangeEvent = Extract<StreamEvent<{ id: number }>, { kind: 'change' }>;

/** One bit per id, growing as ids grow: which ids arrived, to count each once. */
class IdSet {
  private bits = new Uint8Array(1 << 20);

  /** Adds `id`; false when it was there already. */
  add(id: number): boolean {
    const byte = id >>> 3;
    while (byte >= this.bits.length) {
      const bigger = new Uint8Array(this.bits.length * 2);
      bigger.set(this.bits);
      this.bits = bigger;
    }
    const mask = 1 << (id & 7);
    if ((this.bits[byte]! & mask) !== 0) return false;
    this.bits[byte]! |= mask;
    return true;
  }
}

export default async function soakConsumer(args: SoakConsumerArgs, channel: Channel): Promise<SoakConsumerResult> {
  const logged: string[] = [];
  const record = (level: string) => (message: string, meta?: Record<string, unknown>) => {
    logged.push(`${level}: ${message}${meta ? ` ${JSON.stringify(meta)}` : ''}`);
  };
  // No pruneInterval (nor anything else) given: the library's defaults are what is soaked.
  // Tide warnings (consumer-stalled, consumer-expired) go through the logger too.
  const tide = await connect({
    connectionString: args.url,
    logger: { debug: () => undefined, info: () => undefined, warn: record('warn'), error: record('error') },
  });

  const seen = new IdSet();
  let received = 0;
  let duplicates = 0;
  let arrivals: number[] = [];
  let markCaughtUp!: () => void;
  const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
  const subscription = tide
    .events$<{ id: number }>(args.table, { consumer: args.consumer })
    .pipe(
      tap((event) => {
        if (event.kind === 'caught-up') markCaughtUp();
      }),
      filter((event): event is ChangeEvent => event.kind === 'change'),
      map((event) => event.change),
      acknowledge(),
    )
    .subscribe({
      next: (change) => {
        const at = nowMs();
        const id = Number(change.key.id);
        if (!seen.add(id)) {
          duplicates += 1;
          return;
        }
        received += 1;
        if (id % args.sampleEvery === 0) arrivals.push(id, at);
      },
      // The stream failing (say, the consumer expired) fails the job: the parent's receive rejects with this text.
      error: (error: unknown) => {
        process.send!({ type: 'error', data: `consumer stream failed: ${String(error)}` }, () => process.exit(1));
      },
    });
  await caughtUp;
  channel.send('ready');

  const report = (): SoakReport => {
    const taken: SoakReport = {
      at: nowMs(),
      received,
      duplicates,
      arrivals: Float64Array.from(arrivals),
      rssMB: process.memoryUsage().rss / 2 ** 20,
      logged: logged.splice(0),
    };
    arrivals = [];
    return taken;
  };

  for (;;) {
    const command = await channel.receive<SoakCommand>('command');
    if (command.kind === 'stop') break;
    if (command.kind === 'report') {
      channel.send('report', report());
    } else {
      const deadline = nowMs() + command.timeoutMs;
      while (received < command.count && nowMs() < deadline) await sleep(5);
      channel.send('waited', report());
    }
  }
  subscription.unsubscribe();
  await tide.close();
  return { received, duplicates, maxRssMB: process.resourceUsage().maxRSS / 1024 };
}
