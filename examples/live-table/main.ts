// Runnable: npx tsx examples/live-table/main.ts, then open the printed URL.
// Uses DATABASE_URL if set (it creates, and finally drops, a live_table_demo table there),
// else an embedded PostgreSQL. PORT picks the port (default 3000). Writes a random change
// every 2 s so the page moves; change rows yourself with psql and watch them follow.
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import { connect } from '../../src/index.js';
import { createLiveTableServer } from './server.js';

const TABLE = 'live_table_demo';
const server = process.env.DATABASE_URL ? undefined : await startPostgres();
const connectionString = process.env.DATABASE_URL ?? server!.connectionString;
const pool = new pg.Pool({ connectionString });
// Ctrl-C also stops an embedded server, which drops idle connections: expected, not fatal.
pool.on('error', () => undefined);
try {
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, username text NOT NULL, quota_bytes bigint NOT NULL)`);
} catch (error) {
  if ((error as { code?: string }).code !== '42P07') throw error;
  console.error(`a ${TABLE} table exists already: this demo creates and drops its own, so it stops here`);
  process.exit(1);
}
await pool.query(`INSERT INTO ${TABLE} SELECT g, 'user' || g, g * 1000 FROM generate_series(1, 5) g`);

const tide = await connect({ connectionString });
const live = createLiveTableServer({
  tide,
  table: TABLE,
  columns: ['id', 'username', 'quota_bytes'],
  title: 'Mail users (live)',
  // POST /rows answers once every open page has the change (tide.waitFor).
  write: async (row) => {
    const { rows } = await pool.query<{ txid: string }>(
      `WITH written AS (
         INSERT INTO ${TABLE} VALUES ($1::int, $2, $3)
         ON CONFLICT (id) DO UPDATE SET username = excluded.username, quota_bytes = excluded.quota_bytes)
       SELECT pg_current_xact_id()::text AS txid`,
      [row['id'], row['username'], row['quota_bytes']],
    );
    return rows[0]!.txid;
  },
});
const url = await live.listen(Number(process.env.PORT ?? 3000));
console.log(`open ${url}`);
console.log(`try: psql '${connectionString}' -c "UPDATE ${TABLE} SET quota_bytes = 42 WHERE id = 1"`);
console.log(`or:  curl -d '{"id":9,"username":"zoe","quota_bytes":9}' ${url}rows   (answers once the page has it)`);
console.log('Ctrl-C to stop');

const writer = setInterval(() => {
  const id = 1 + Math.floor(Math.random() * 8);
  void pool
    .query(
      `INSERT INTO ${TABLE} VALUES ($1::int, 'user' || $1::int, $2)
       ON CONFLICT (id) DO UPDATE SET quota_bytes = excluded.quota_bytes`,
      [id, Math.floor(Math.random() * 1e6)],
    )
    .then(() => (Math.random() < 0.2 ? pool.query(`DELETE FROM ${TABLE} WHERE id = $1`, [id]) : undefined))
    .catch((error: unknown) => console.error(error));
}, 2_000);

process.once('SIGINT', () => {
  void (async () => {
    clearInterval(writer);
    await live.close();
    await tide.close();
    // Ctrl-C reaches the embedded server too (same process group), and it goes away with
    // its data; a DATABASE_URL server keeps running, so clean up there.
    if (!server) await pool.query(`DROP TABLE ${TABLE}`);
    await pool.end();
    await server?.destroy();
  })().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
});
