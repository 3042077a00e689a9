// Measures backlog replay: N changes through changes$ (from: 'beginning') against a raw
// pg read of the same log pages with the same SQL, in the same run on the same server.
// Run: npm run replay-rate [-- <changes>]
import pg from 'pg';
import { count, firstValueFrom, take } from 'rxjs';
import { startPostgres } from '../src/embedded.js';
import { connect } from '../src/index.js';

const total = Number(process.argv[2] ?? 100_000);
const runs = 3;
const server = process.env.DATABASE_URL ? undefined : await startPostgres();
const connectionString = process.env.DATABASE_URL ?? server!.connectionString;
const pool = new pg.Pool({ connectionString });
await pool.query(`DROP TABLE IF EXISTS replay_rate;
  CREATE TABLE replay_rate (id int PRIMARY KEY, owner text NOT NULL, quota bigint NOT NULL, note text)`);
const tide = await connect({ connectionString });
await tide.watch('replay_rate');
await pool.query(
  `INSERT INTO replay_rate SELECT g, 'user' || g, g * 1000, repeat('x', 40) FROM generate_series(1, $1) g`,
  [total],
);

async function timed(work: () => Promise<number>): Promise<{ seconds: number; rows: number }> {
  const start = process.hrtime.bigint();
  const rows = await work();
  return { seconds: Number(process.hrtime.bigint() - start) / 1e9, rows };
}

const rawKeyset = () =>
  timed(async () => {
    let rows = 0;
    let after = ['0', '0'];
    for (;;) {
      // The reader's own SQL (an ordered index walk), without pgtide's JS and RxJS layers.
      const page = await pool.query(
        `SELECT id, pos, txid, op, changed, new, old, written_at
           FROM pgtide.read_page('replay_rate'::regclass, $1, $2, 9223372036854775807, 9223372036854775807, 1000)`,
        after,
      );
      rows += page.rows.length;
      if (page.rows.length < 1000) return rows;
      const last = page.rows[page.rows.length - 1];
      after = [last.pos as string, last.id as string];
    }
  });
const throughTide = () =>
  timed(() => firstValueFrom(tide.changes$('replay_rate', { from: 'beginning' }).pipe(take(total), count())));

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const results: Record<string, number[]> = { raw: [], tide: [] };
await rawKeyset(); // warm the cache for both
for (let run = 0; run < runs; run += 1) {
  results.raw!.push(total / (await rawKeyset()).seconds);
  results.tide!.push(total / (await throughTide()).seconds);
}
const raw = median(results.raw!);
const replay = median(results.tide!);
console.table({
  'raw pg read of the same pages (read_page, 1000/page)': { 'changes/s (median of 3)': Math.round(raw), ratio: '1.00x' },
  "changes$ from 'beginning'": { 'changes/s (median of 3)': Math.round(replay), ratio: `${(replay / raw).toFixed(2)}x` },
});
await tide.close();
await pool.end();
await server?.destroy();
