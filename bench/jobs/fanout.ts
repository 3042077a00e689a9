import type { StreamEvent } from '../../src/types.js';
// Fan-out: N observables of one table on one Tide, each following a different row
// (rowId), or one observable of the whole table (the baseline). A writer in this process
// updates one row per statement at a steady rate, always a row that exactly one
// observable follows, and each emission's latency is measured from the send.
import { Subscription } from 'rxjs';
import type { Channel } from '../worker.js';
import { connectTide, connectedClient } from '../lib/db.js';
import { paced } from '../lib/pacer.js';
import { nowMs, quantile, sleep } from '../lib/stats.js';

export interface FanoutArgs {
  readonly url: string;
  readonly table: string;
  /** 1: one observable of the whole table; otherwise this many rowId observables (ids 1..N). */
  readonly observers: number;
  /** Rows in the table (ids 1..rows); the baseline's writes spread over all of them. */
  readonly rows: number;
  readonly rate: number;
  readonly durationMs: number;
  readonly warmupMs: number;
  readonly windows: number;
  /**
   * Added to the written values: each process must write values no earlier process wrote
   * (an UPDATE that does not change the value is, rightly, not captured).
   */
  readonly valueBase: number;
}

export interface FanoutResult {
  readonly observers: number;
  readonly subscribeMs: number;
  readonly rssBeforeMB: number;
  readonly rssAfterSubscribeMB: number;
  readonly heapAfterSubscribeMB: number;
  readonly maxRssMB: number;
  readonly windows: Array<{ p50: number; p99: number; max: number; sent: number; received: number; rate: number; rssMB: number }>;
}

const mb = (bytes: number) => bytes / 2 ** 20;

function collect(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

export default async function fanout(args: FanoutArgs, _channel: Channel): Promise<FanoutResult> {
  collect();
  const rssBeforeMB = mb(process.memoryUsage().rss);
  const tide = await connectTide(args.url);
  const writer = await connectedClient(args.url);
  const maxSends = Math.ceil(((args.durationMs * args.windows + args.warmupMs) / 1000) * args.rate) + 1000;
  const sentAt = new Float64Array(maxSends + 1);
  let received = 0;
  let recording: Float64Array | undefined;
  let recorded = 0;
  const arrive = (seq: number) => {
    const latency = nowMs() - sentAt[seq]!;
    received += 1;
    if (recording && recorded < recording.length) recording[recorded++] = latency;
  };

  const subscriptions = new Subscription();
  const start = nowMs();
  let caughtUp = 0;
  const onEvent = (event: StreamEvent<{ quota: number }>) => {
    if (event.kind === 'caught-up') caughtUp += 1;
    else if (event.kind === 'change') arrive(Number(event.change.new!.quota) - args.valueBase);
  };
  if (args.observers === 1) {
    subscriptions.add(tide.events$<{ quota: number }>(args.table).subscribe(onEvent));
  } else {
    for (let id = 1; id <= args.observers; id += 1) {
      subscriptions.add(tide.events$<{ quota: number }>(args.table, { rowId: id }).subscribe(onEvent));
    }
  }
  while (caughtUp < args.observers) await sleep(5);
  const subscribeMs = nowMs() - start;
  collect();
  const memory = process.memoryUsage();

  const span = args.observers === 1 ? args.rows : args.observers;
  let seq = 0;
  let state = 12345;
  const random = () => {
    // xorshift: the same row sequence in every process.
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  const window = async (durationMs: number, record: boolean) => {
    const count = Math.round((durationMs / 1000) * args.rate);
    recording = record ? new Float64Array(count) : undefined;
    recorded = 0;
    received = 0;
    const rate = await paced(count, args.rate, async () => {
      const id = 1 + Math.floor(random() * span);
      const value = ++seq;
      sentAt[value] = nowMs();
      await writer.query({ name: 'fan_update', text: `UPDATE ${args.table} SET quota = $2 WHERE id = $1`, values: [id, args.valueBase + value] });
    });
    const deadline = nowMs() + 5000;
    while (received < count && nowMs() < deadline) await sleep(5);
    const samples = recording ? recording.subarray(0, recorded) : new Float64Array(0);
    return {
      p50: quantile(samples, 0.5),
      p99: quantile(samples, 0.99),
      max: quantile(samples, 1),
      sent: count,
      received,
      rate,
      rssMB: mb(process.memoryUsage().rss),
    };
  };
  await window(args.warmupMs, false);
  const windows = [];
  for (let index = 0; index < args.windows; index += 1) windows.push(await window(args.durationMs, true));
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  subscriptions.unsubscribe();
  await tide.close();
  await writer.end();
  return {
    observers: args.observers,
    subscribeMs,
    rssBeforeMB,
    rssAfterSubscribeMB: mb(memory.rss),
    heapAfterSubscribeMB: mb(memory.heapUsed),
    maxRssMB,
    windows,
  };
}
