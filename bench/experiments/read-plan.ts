// Why migration 7 fixes read_batch's plan (issue 15): the server time of one live read
// (a wake-up that finds one new row) under PostgreSQL's default plan_cache_mode and
// under force_generic_plan, in a database whose log holds an analyzed history of
// another table. Not part of `npm run bench`.
//
//   npx tsx bench/experiments/read-plan.ts [--history=200000]
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import { connectTide, insertRangeSql, liveTableBesideHistory } from '../lib/db.js';

const history = Number(process.argv.find((arg) => arg.startsWith('--history='))?.slice('--history='.length) ?? 200_000);
const readBatch = 'pgtide.read_batch(oid, integer, pg_snapshot, pg_snapshot, bigint, integer, boolean, text[], boolean, integer, integer[])';

/** Server µs per read_batch call, 3 rounds of 2000 calls in one session (the plan cache is per session). */
const timedReads = `DO $$
DECLARE
  started timestamptz;
  base pg_snapshot;
  found integer;
BEGIN
  SELECT format('%1$s:%1$s:', pg_snapshot_xmax(pg_current_snapshot())::text::bigint - 1)::pg_snapshot INTO base;
  FOR round IN 1..3 LOOP
    started := clock_timestamp();
    FOR attempt IN 1..2000 LOOP
      SELECT count(*) INTO found FROM pgtide.read_batch('live_rows'::regclass, 1, base, NULL, NULL, 1000, true, NULL, false, NULL, NULL);
    END LOOP;
    RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - started) * 1e6 / 2000);
  END LOOP;
END $$`;

async function serverMicrosPerRead(url: string): Promise<number[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const rounds: number[] = [];
  client.on('notice', (notice) => rounds.push(Number(notice.message)));
  try {
    await client.query(timedReads);
  } finally {
    await client.end();
  }
  return rounds;
}

const server = await startPostgres({});
try {
  const tide = await connectTide(server.connectionString);
  await liveTableBesideHistory(tide, history);
  await tide.pool.query(insertRangeSql('live_rows'), [1, 1]);
  await tide.pool.query('ANALYZE pgtide.log');
  const installed = (await tide.pool.query<{ config: string[] }>(`SELECT proconfig AS config FROM pg_proc WHERE oid = '${readBatch}'::regprocedure`)).rows[0]!;
  console.log(`log: ${history} analyzed rows of another table; read_batch settings: ${installed.config.join(' ')}`);
  for (const mode of ['auto', 'force_generic_plan'] as const) {
    await tide.pool.query(`ALTER FUNCTION ${readBatch} SET plan_cache_mode = ${mode}`);
    console.log(`plan_cache_mode = ${mode.padEnd(18)} server µs per live read (3 rounds of 2000): ${(await serverMicrosPerRead(server.connectionString)).join(', ')}`);
  }
  await tide.close();
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  await server.destroy();
}
