// A durable consumer's pipeline over a backlog, with acknowledge() (consumer stream), or
// the same pipeline without acknowledgement (plain stream from 'beginning').
import { concatMap, type OperatorFunction } from 'rxjs';
import { acknowledge, batchChanges, type Change } from '../../src/index.js';
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';
import { nowMs } from '../lib/stats.js';

export interface DurableArgs {
  readonly url: string;
  readonly table: string;
  readonly total: number;
  readonly mode: 'ack' | 'plain';
  readonly consumer: string;
}

export interface DurableResult {
  readonly rows: number;
  readonly seconds: number;
  readonly rate: number;
  /** ms from the last change reaching the end of the pipeline to the consumer position being saved (ack). */
  readonly saveMs: number;
  readonly maxRssMB: number;
}

const identity: OperatorFunction<Change[], Change[]> = (source) => source;

export default async function durable(args: DurableArgs, _channel: Channel): Promise<DurableResult> {
  const tide = await connectTide(args.url);
  const start = nowMs();
  const source = args.mode === 'ack' ? tide.changes$(args.table, { consumer: args.consumer, from: 'beginning' }) : tide.changes$(args.table, { from: 'beginning' });
  let rows = 0;
  await new Promise<void>((resolve, reject) => {
    const subscription = source
      .pipe(
        batchChanges({ size: 100, time: 10 }),
        // The handler: asynchronous, one batch at a time.
        concatMap(async (batch) => {
          await Promise.resolve();
          return batch;
        }),
        args.mode === 'ack' ? acknowledge() : identity,
      )
      .subscribe({
        next: (batch) => {
          rows += batch.length;
          if (rows >= args.total) {
            resolve();
            setImmediate(() => subscription.unsubscribe());
          }
        },
        error: reject,
      });
  });
  const end = nowMs();
  let saveMs = 0;
  if (args.mode === 'ack') {
    // Wait until the saved position covers everything (batched writes, acknowledgeFlushDelay).
    for (;;) {
      const consumer = (await tide.consumers()).find((info) => info.name === args.consumer);
      if (consumer && consumer.lagChanges === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    saveMs = nowMs() - end;
  }
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  await tide.close();
  const seconds = (end - start) / 1000;
  return { rows, seconds, rate: rows / seconds, saveMs, maxRssMB };
}
