// What a live subscriber's CPU per change is made of (issue 15): a writer in another
// process commits single-row INSERTs at a fixed rate; this process measures its own CPU
// per change, first for a bare LISTEN client receiving one NOTIFY per commit (the
// floor of any NOTIFY-driven reader), then for changes$ of a watched table (NOTIFY,
// then a log read). Not part of `npm run bench`.
//
//   npx tsx bench/experiments/subscriber-cost.ts [--rates=1000,1400,0] [--seconds=5]
//
// A rate of 0 means as fast as one connection commits.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import { connectTide, createTableSql, insertOneSql } from '../lib/db.js';
import { nowMs, sleep } from '../lib/stats.js';

const self = fileURLToPath(import.meta.url);
const option = (name: string, fallback: string) => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;

type Mode = 'notify' | 'insert';

/** The child: commits at `rate` per second for `seconds` (each awaited), then reports how many. */
async function writer(url: string, mode: Mode, rate: number, seconds: number): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const start = nowMs();
  let sent = 0;
  while (nowMs() - start < seconds * 1000) {
    sent += 1;
    if (mode === 'notify') await client.query({ name: 'notify', text: `SELECT pg_notify('cost', $1)`, values: [String(sent)] });
    else await client.query({ name: 'insert', text: insertOneSql('cost_rows'), values: [sent] });
    if (rate > 0) {
      const wait = start + (sent / rate) * 1000 - nowMs();
      if (wait > 0) await sleep(wait);
    }
  }
  await client.end();
  process.send!(sent);
}

function runWriter(url: string, mode: Mode, rate: number, seconds: number): Promise<number> {
  const child = fork(self, ['--writer', url, mode, String(rate), String(seconds)], { execArgv: ['--import', 'tsx'] });
  return new Promise((resolve, reject) => {
    child.once('message', (sent) => resolve(sent as number));
    child.once('exit', (code) => code !== 0 && reject(new Error(`writer exited with ${code}`)));
  });
}

function cpuMicros(since: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(since);
  return used.user + used.system;
}

/** Runs a writer at `rate`, waits until `arrived()` counts every commit: commits, commits/s, and this process's CPU µs per commit. */
async function perCommit(url: string, mode: Mode, rate: number, seconds: number, arrived: () => number) {
  const cpu = process.cpuUsage();
  const start = nowMs();
  const commits = await runWriter(url, mode, rate, seconds);
  const perSecond = commits / ((nowMs() - start) / 1000);
  while (arrived() < commits) await sleep(2);
  return { commits, perSecond, cpuMicros: cpuMicros(cpu) / commits };
}

async function measure(url: string, rates: number[], seconds: number): Promise<void> {
  const listener = new pg.Client({ connectionString: url });
  await listener.connect();
  await listener.query('LISTEN cost');
  let notified = 0;
  listener.on('notification', () => (notified += 1));
  const tide = await connectTide(url);
  await tide.pool.query(createTableSql('cost_rows'));
  await tide.watch('cost_rows');
  let received = 0;
  const subscription = tide.changes$('cost_rows').subscribe(() => (received += 1));
  await sleep(300);
  console.log('rate/s (target)  NOTIFY/s  LISTEN client µs/NOTIFY  INSERT/s  changes$ µs/change  log reads/change  wake-ups/change');
  for (const rate of rates) {
    notified = 0;
    const notify = await perCommit(url, 'notify', rate, seconds, () => notified);
    await tide.pool.query('TRUNCATE cost_rows');
    await sleep(200);
    received = 0;
    const reads = tide.counters.logQueries;
    const wakeUps = tide.counters.wakeUps;
    const insert = await perCommit(url, 'insert', rate, seconds, () => received);
    const written = insert.commits;
    console.log(
      `${String(rate || 'max').padStart(15)}  ${notify.perSecond.toFixed(0).padStart(8)}  ${notify.cpuMicros.toFixed(1).padStart(23)}  ` +
        `${insert.perSecond.toFixed(0).padStart(8)}  ${insert.cpuMicros.toFixed(1).padStart(18)}  ${((tide.counters.logQueries - reads) / written).toFixed(2).padStart(16)}  ` +
        `${((tide.counters.wakeUps - wakeUps) / written).toFixed(2).padStart(15)}`,
    );
  }
  subscription.unsubscribe();
  await tide.close();
  await listener.end();
}

if (process.argv[2] === '--writer') {
  const [, , , url, mode, rate, seconds] = process.argv;
  await writer(url!, mode as Mode, Number(rate), Number(seconds));
} else {
  const rates = option('rates', '1000,1400,0').split(',').map(Number);
  const seconds = Number(option('seconds', '5'));
  const server = await startPostgres({});
  try {
    await measure(server.connectionString, rates, seconds);
  } finally {
    await server.destroy();
  }
}
