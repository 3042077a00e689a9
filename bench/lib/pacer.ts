import { nowMs, sleep } from './stats.js';

/**
 * Calls `send(i)` for i = 0..count-1 at `rate` per second on average, one at a time
 * (each send awaited). Sleeps between sends instead of spinning, so a 2-core machine
 * keeps its CPU for the server and the receiver; when a timer fires late, the sends that
 * fell due are made back to back. Returns the achieved rate.
 */
export async function paced(count: number, rate: number, send: (index: number) => Promise<void>): Promise<number> {
  const interval = 1000 / rate;
  const start = nowMs();
  let index = 0;
  while (index < count) {
    const due = Math.min(count, Math.floor((nowMs() - start) / interval) + 1);
    while (index < due) await send(index++);
    if (index < count) {
      const wait = start + index * interval - nowMs();
      await sleep(Math.max(0, wait));
    }
  }
  return count / ((nowMs() - start) / 1000);
}
