// Where the latency row's time goes (issue 15): one writer sends autocommit single-row
// INSERTs into a watched table 1 ms apart while a changes$ subscriber in this process
// follows it, and a plain LISTEN client beside it notes when each NOTIFY arrives. Per
// change: the INSERT's round trip (send -> reply: capture and commit), reply -> the
// NOTIFY at the LISTEN client, NOTIFY -> changes$ emission (the subscriber's wake-up,
// log read, decoding), and send -> emission (the latency row's figure). The log holds
// 100k older changes of another table, as in the latency row. Not part of `npm run bench`.
//
//   npx tsx bench/experiments/latency-split.ts [--changes=2000]
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import { connectTide, liveTableBesideHistory } from '../lib/db.js';

const changes = Number(process.argv.find((arg) => arg.startsWith('--changes='))?.slice('--changes='.length) ?? 2000);

function percentiles(samples: readonly number[]): string {
  const sorted = samples.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  const at = (quantile: number): string => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * quantile))]!.toFixed(3);
  return `p50 ${at(0.5)} ms, p99 ${at(0.99)} ms`;
}

const server = await startPostgres({});
try {
  const tide = await connectTide(server.connectionString);
  await liveTableBesideHistory(tide, 100_000);

  const writer = new pg.Client({ connectionString: server.connectionString });
  const listener = new pg.Client({ connectionString: server.connectionString });
  await Promise.all([writer.connect(), listener.connect()]);
  await listener.query('LISTEN pgtide');
  const notified: number[] = [];
  listener.on('notification', () => notified.push(performance.now()));

  const emitted = new Map<number, number>();
  let waiting: { id: number; resolve: () => void } | undefined;
  let caughtUp!: () => void;
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  const subscription = tide.events$('live_rows').subscribe((event) => {
    if (event.kind !== 'change') return caughtUp();
    const id = Number((event.change.key as { id: unknown }).id);
    emitted.set(id, performance.now());
    if (waiting?.id === id) waiting.resolve();
  });
  await ready;

  const parts = { roundTrip: [] as number[], replyToNotify: [] as number[], notifyToEmit: [] as number[], sendToEmit: [] as number[] };
  const readsBefore = tide.counters.logQueries;
  for (let id = 1; id <= changes; id += 1) {
    const seen = notified.length;
    const sent = performance.now();
    await writer.query({
      name: 'insert',
      text: `INSERT INTO live_rows (id, owner, email, quota, active, created_at, note) VALUES ($1, 'owner', 'user@example.com', 1, true, now(), repeat('x', 40))`,
      values: [id],
    });
    const replied = performance.now();
    if (!emitted.has(id)) await new Promise<void>((resolve) => (waiting = { id, resolve }));
    const notifiedAt = notified[seen] ?? Number.NaN;
    parts.roundTrip.push(replied - sent);
    parts.replyToNotify.push(notifiedAt - replied);
    parts.notifyToEmit.push(emitted.get(id)! - notifiedAt);
    parts.sendToEmit.push(emitted.get(id)! - sent);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  console.log(`${changes} single-row INSERTs 1 ms apart, changes$ in this process, log reads per change ${((tide.counters.logQueries - readsBefore) / changes).toFixed(2)}`);
  console.log(`INSERT round trip (send -> reply):      ${percentiles(parts.roundTrip)}`);
  console.log(`reply -> NOTIFY at a LISTEN client:     ${percentiles(parts.replyToNotify)}`);
  console.log(`NOTIFY -> changes$ emission:            ${percentiles(parts.notifyToEmit)}`);
  console.log(`send -> changes$ emission (the row):    ${percentiles(parts.sendToEmit)}`);
  subscription.unsubscribe();
  await Promise.all([writer.end(), listener.end(), tide.close()]);
} finally {
  await server.destroy();
}
