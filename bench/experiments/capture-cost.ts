// Where a watched single-row INSERT's time goes on the server (issue 15): the time per
// call of each pgtide trigger function, as PostgreSQL's own function statistics count
// it (track_functions = all), and the round trip and the server backend's CPU (from
// /proc: the server runs on this machine) of an autocommit INSERT into a watched table,
// an unwatched copy, and a copy with the bare trigger+log of the write rows (the floor
// of trigger capture, bench/lib/db.ts), alternating in blocks. One client, paced by 1 ms
// like the latency row, nobody reading. Not part of `npm run bench`.
//
//   npx tsx bench/experiments/capture-cost.ts [--statements=3000]
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import { bareCaptureSql, connectTide, createTableSql } from '../lib/db.js';

const statements = Number(process.argv.find((arg) => arg.startsWith('--statements='))?.slice('--statements='.length) ?? 3000);
const block = 250;

/** Median and 90th percentile, in µs, of round trips in ms. */
function summary(samples: readonly number[]): string {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (quantile: number): string => (sorted[Math.floor(sorted.length * quantile)]! * 1000).toFixed(0);
  return `p50 ${at(0.5)} µs, p90 ${at(0.9)} µs`;
}

/** User plus system CPU seconds of a process so far (Linux). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ
}

/** pgtide's functions' call counts and times (ms) so far, by name. */
async function functionTimes(db: pg.Pool): Promise<Map<string, { calls: number; total: number; self: number }>> {
  const { rows } = await db.query<{ funcname: string; calls: string; total_time: number; self_time: number }>(
    `SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions WHERE schemaname = 'pgtide' ORDER BY total_time DESC`,
  );
  return new Map(rows.map((row) => [row.funcname, { calls: Number(row.calls), total: row.total_time, self: row.self_time }]));
}

const server = await startPostgres({});
try {
  const tide = await connectTide(server.connectionString);
  await tide.pool.query(`${createTableSql('watched_rows')}; ${createTableSql('plain_rows')}; ${createTableSql('bare_rows')}`);
  await tide.pool.query(bareCaptureSql('bare_rows'));
  await tide.watch('watched_rows');
  const tables = ['plain_rows', 'bare_rows', 'watched_rows'] as const;
  const client = new pg.Client({ connectionString: server.connectionString });
  await client.connect();
  await client.query(`SET track_functions = 'all'`);
  const backend = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const insert = (table: string, id: number) =>
    client.query({
      name: `insert_${table}`,
      text: `INSERT INTO ${table} (id, owner, email, quota, active, created_at, note) VALUES ($1, 'owner', 'user@example.com', 1, true, now(), repeat('x', 40))`,
      values: [id],
    });
  const roundTrips: Record<string, number[]> = { plain_rows: [], bare_rows: [], watched_rows: [] };
  const backendCpu: Record<string, number> = { plain_rows: 0, bare_rows: 0, watched_rows: 0 };
  // Warm the plans and caches in this session; its statistics reach the shared counters
  // only when flushed, so the counters are taken as a difference of two readings.
  for (let id = 1; id <= 200; id += 1) for (const table of tables) await insert(table, -id);
  await client.query('SELECT pg_stat_force_next_flush()');
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const before = await functionTimes(tide.pool);
  for (let done = 0; done < statements; done += block) {
    for (const table of (done / block) % 2 === 0 ? tables : [...tables].reverse()) {
      const cpuBefore = cpuSeconds(backend);
      for (let id = done + 1; id <= done + block; id += 1) {
        const started = performance.now();
        await insert(table, id);
        roundTrips[table]!.push(performance.now() - started);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
      backendCpu[table]! += cpuSeconds(backend) - cpuBefore;
    }
  }
  await client.end(); // flushes this session's function statistics
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const after = await functionTimes(tide.pool);
  console.log(`${statements} autocommit single-row INSERTs into each table, 1 ms apart, blocks of ${block} alternating`);
  const names = { plain_rows: 'unwatched', bare_rows: 'bare trigger+log', watched_rows: 'watched by pgtide' };
  for (const table of tables) {
    const perInsert = ((backendCpu[table]! / statements) * 1e6).toFixed(0);
    console.log(`${names[table].padEnd(18)} round trip ${summary(roundTrips[table]!)}; server backend CPU ${perInsert} µs per INSERT`);
  }
  console.log('pgtide functions (server time per call):');
  for (const [name, total] of after) {
    const calls = total.calls - (before.get(name)?.calls ?? 0);
    if (calls === 0) continue;
    const perCall = (ms: number, earlier = 0) => (((ms - earlier) * 1000) / calls).toFixed(1);
    console.log(
      `  ${name.padEnd(16)} ${String(calls).padStart(6)} calls, ${perCall(total.total, before.get(name)?.total).padStart(6)} µs per call (self ${perCall(total.self, before.get(name)?.self)})`,
    );
  }
  await tide.close();
} finally {
  await server.destroy();
}
