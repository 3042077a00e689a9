// pgtide benchmark suite: `npm run bench` (about 10 minutes) or `npm run bench -- --quick`
// (under 2 minutes). Starts its own embedded PostgreSQL with wal_level=logical, runs every
// scenario with its baseline in the same run, prints the table and writes
// bench/results/<date>.json. `--only=a,b` runs only the named rows (see `rows` below).
// `--soak` runs only the soak row (10 minutes, never part of the default list nor of
// `--quick`) and writes <date>-soak.json.
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startPostgres } from '../src/embedded.js';
import { renderTable, type Row } from './lib/report.js';
import { postmasterPid } from './lib/cpu.js';
import { settingsFor, type BenchServer, type Settings } from './lib/settings.js';
import { nowMs } from './lib/stats.js';
import { durableRow } from './scenarios/durable.js';
import { fanoutRow } from './scenarios/fanout.js';
import { groupsRow } from './scenarios/groups.js';
import { idleQueriesRow } from './scenarios/idle.js';
import { latencyRow } from './scenarios/latency.js';
import { latency4wRow, latencyBlockedRow } from './scenarios/latency-writers.js';
import { replayRow } from './scenarios/replay.js';
import { soakRow } from './scenarios/soak.js';
import { sustainedRow } from './scenarios/sustained.js';
import { bulkInsertRow, insertRow, updateRow } from './scenarios/write-rows.js';

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const soak = argv.includes('--soak');
const only = argv.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',');
const settings = settingsFor(quick);

type RowRunner = (server: BenchServer, settings: Settings) => Promise<Row>;
const rows: Array<[string, RowRunner]> = [
  ['insert-1', (url, s) => insertRow(url, s, 1)],
  ['insert-4', (url, s) => insertRow(url, s, 4)],
  ['bulk', bulkInsertRow],
  ['update', updateRow],
  ['latency', latencyRow],
  ['latency-4w', latency4wRow],
  ['latency-blocked', latencyBlockedRow],
  ['sustained-1', (url, s) => sustainedRow(url, s, 1)],
  ['sustained-4', (url, s) => sustainedRow(url, s, 4)],
  ['replay', replayRow],
  ['fanout', fanoutRow],
  ['durable', durableRow],
  ['groups', groupsRow],
  ['jetstream', (server, s) => import('./scenarios/jetstream.js').then((scenario) => scenario.jetstreamRow(server, s))],
  ['idle-queries', idleQueriesRow],
  ['live-ui', (server, s) => import('./scenarios/live-ui.js').then((scenario) => scenario.liveUiRow(server, s))],
];
// The soak is long and measures drift over time, not a figure beside a baseline: it runs alone.
const soakRows: Array<[string, RowRunner]> = [['soak', soakRow]];
const selected = soak ? soakRows : rows;

const serverSettings = {
  wal_level: 'logical',
  max_replication_slots: 10,
  max_wal_senders: 10,
};

const started = nowMs();
console.log(`pgtide benchmark${quick ? ' (--quick)' : ''}${soak ? ' (--soak)' : ''}: starting embedded PostgreSQL (${JSON.stringify(serverSettings)})`);
const server = await startPostgres({ settings: serverSettings, verbose: process.env.BENCH_VERBOSE === "1" });
const results: Row[] = [];
const failures: Array<{ id: string; error: string }> = [];
let version = '';
try {
  const admin = new pg.Client({ connectionString: server.connectionString });
  await admin.connect();
  version = (await admin.query<{ version: string }>('SELECT version()')).rows[0]!.version;
  const shown = await admin.query<{ name: string; setting: string }>(
    `SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'max_wal_size', 'wal_sync_method') ORDER BY name`,
  );
  await admin.end();
  console.log(version);
  const target: BenchServer = { url: server.connectionString, postmaster: postmasterPid(server.dataDir) };
  console.log(shown.rows.map((row) => `${row.name}=${row.setting}`).join(' '));
  for (const [id, run] of selected) {
    if (only && !only.includes(id)) continue;
    const rowStart = nowMs();
    process.stdout.write(`${id} ... `);
    try {
      const row = await run(target, settings);
      results.push(row);
      console.log(`${((nowMs() - rowStart) / 1000).toFixed(1)} s`);
      console.log(renderTable([row]).split('\n').slice(2).join('\n'));
      for (const note of row.notes ?? []) console.log(`  note: ${note}`);
    } catch (error) {
      failures.push({ id, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
      console.log(`FAILED after ${((nowMs() - rowStart) / 1000).toFixed(1)} s:`, error);
    }
  }
} finally {
  await server.destroy();
}

const seconds = (nowMs() - started) / 1000;
const table = renderTable(results);
console.log(`\n${table}\n`);
console.log(`total ${seconds.toFixed(0)} s`);

const machine = {
  nproc: Number(execFileSync('nproc').toString().trim()),
  cpu: cpus()[0]?.model ?? 'unknown',
  memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
  freeMemoryGiB: +(freemem() / 2 ** 30).toFixed(1),
  loadAverageAtEnd: loadavg().map((value) => +value.toFixed(2)),
  node: process.version,
  postgres: version,
  serverSettings,
};
const date = new Date().toISOString().slice(0, 10);
const directory = join(here, 'results');
mkdirSync(directory, { recursive: true });
const file = join(directory, `${date}${quick ? '-quick' : ''}${only ? '-partial' : ''}${soak ? '-soak' : ''}.json`);
const document = { date: new Date().toISOString(), quick, ...(soak ? { soak } : {}), seconds: Math.round(seconds), machine, settings, rows: results, failures, table };
writeFileSync(`${file}.tmp`, `${JSON.stringify(document, null, 2)}\n`);
renameSync(`${file}.tmp`, file);
console.log(`wrote ${file}`);
if (failures.length > 0) {
  console.error(`${failures.length} row(s) failed: ${failures.map((failure) => failure.id).join(', ')}`);
  process.exitCode = 1;
}
