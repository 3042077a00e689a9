// What one live read and one idle poll cost against the number of rows the table already
// has in the log, with nothing else open and with an unrelated writing transaction open
// in another database: `npx tsx bench/experiments/read-cost.ts` (about a minute; not
// part of npm run bench). Calls the LogReader of this tree directly, as a TableFeed and
// the Hub do: after each single-row commit, the read of the new batch (1 row); with
// nothing new, the poll (tables_with_news for one table; a reader without it polls with
// a page read, which then finds nothing).
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import * as log from '../../src/log.js';
import { resolveSchemaNames } from '../../src/sql.js';
import { connectTide, connectedClient, createTableSql, freshDatabase, insertOneSql, insertRangeSql } from '../lib/db.js';
import { median, nowMs } from '../lib/stats.js';

/** The two reader APIs: a page read (since issue 9: next(), before: page()), a poll if there is one. */
interface AnyReader {
  now(): Promise<unknown>;
  next?(relid: number, position: unknown, limit: number, checkPending: boolean): Promise<{ rows: unknown[]; next: unknown }>;
  page?(relid: number, position: unknown, limit: number): Promise<{ rows: unknown[]; next: unknown }>;
  tablesWithNews?(positions: ReadonlyMap<number, unknown>): Promise<Set<number>>;
}

const sizes = [0, 10_000, 100_000, 300_000];
const reads = 200;

const server = await startPostgres({ settings: { wal_level: 'logical' } });
try {
  const admin = await connectedClient(server.connectionString);
  await admin.query(createTableSql('cost_rows'));
  const tide = await connectTide(server.connectionString);
  await tide.watch('cost_rows');
  await tide.close();
  const relid = Number((await admin.query<{ relid: string }>(`SELECT 'cost_rows'::regclass::oid::int8 AS relid`)).rows[0]!.relid);
  const pool = new pg.Pool({ connectionString: server.connectionString, max: 1 });
  pool.on('error', () => undefined); // the server going away at the end
  const reader = new log.LogReader(pool, await resolveSchemaNames(pool, 'pgtide')) as unknown as AnyReader;
  const read = (position: unknown) => (reader.next ? reader.next(relid, position, 1000, true) : reader.page!(relid, position, 1000));
  console.log(`reader: ${reader.next ? 'snapshot batches (next, tablesWithNews)' : 'horizon (page)'}`);
  const other = await connectedClient(await freshDatabase(server.connectionString, 'read_cost_other'));
  await other.query('CREATE TABLE other_rows (id bigint PRIMARY KEY)');
  let otherRow = 0;
  console.log('log rows of the table | open elsewhere | live read after a commit, p50 | idle poll, p50');
  let nextId = 1;
  for (const size of sizes) {
    if (size >= nextId) {
      for (let from = nextId; from <= size; from += 100_000) await admin.query(insertRangeSql('cost_rows'), [from, Math.min(size, from + 99_999)]);
      nextId = size + 1;
      await admin.query('VACUUM ANALYZE pgtide.log');
    }
    for (const open of [false, true]) {
      if (open) {
        await other.query('BEGIN');
        await other.query('INSERT INTO other_rows (id) VALUES ($1)', [++otherRow]);
      }
      let position = await reader.now();
      const live: number[] = [];
      let unreadable = false;
      for (let index = 0; index < reads && !unreadable; index += 1) {
        await admin.query({ name: 'cost_insert', text: insertOneSql('cost_rows'), values: [nextId++] });
        const start = nowMs();
        const page = await read(position);
        live.push(nowMs() - start);
        // A horizon reader cannot read past a transaction that is open anywhere on the server.
        if (page.rows.length === 0 && open && !reader.next) unreadable = true;
        else if (page.rows.length !== 1) throw new Error(`read ${page.rows.length} rows, expected 1`);
        position = page.next;
      }
      const poll: number[] = [];
      for (let index = 0; index < reads; index += 1) {
        const start = nowMs();
        if (reader.tablesWithNews) {
          const news = await reader.tablesWithNews(new Map([[relid, position]]));
          if (news.size !== 0) throw new Error('the poll found news where there is none');
        } else {
          const page = await read(position);
          if (page.rows.length !== 0 && !unreadable) throw new Error('the poll found rows where there are none');
          position = page.next;
        }
        poll.push(nowMs() - start);
      }
      if (open) await other.query('COMMIT');
      const liveText = unreadable ? 'n/a: unreadable until it ends' : `${median(live).toFixed(2)} ms`;
      console.log(
        `${String(size).padStart(21)} | ${(open ? 'a writing txn' : 'nothing').padEnd(14)} | ${liveText.padStart(30)} | ${median(poll).toFixed(2).padStart(11)} ms`,
      );
    }
  }
  await other.end();
  await pool.end();
  await admin.end();
} finally {
  await server.destroy();
}
