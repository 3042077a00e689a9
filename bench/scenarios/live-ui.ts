// Live UI over SSE (pgtide/http liveHandler, pgtide/client liveState), for the issue's
// closing figures:
//  1. Memory per idle connection: the server process (bench/jobs/live-server.ts: a Tide,
//     liveHandler on a table of 100 rows, node:http) with 0, then N idle liveState clients
//     connected (bench/jobs/live-clients.ts, one Node process), after full garbage
//     collections; per connection = (with N - with 0) / N. Baseline: the same server
//     program with N idle connections to a minimal node:http SSE handler that only sends
//     heartbeats (the same liveState clients read it; they just never get a snapshot).
//     Every measurement gets a fresh server process (RSS a process once reached is not
//     given back, so a second measurement in one process would ride on the first one's
//     pages); pgtide and baseline alternate, rotating the order every run.
//  2. Commit -> client latency: the parent writes single-row UPDATEs at a steady rate
//     (row 1 + s % 100 gets quota = valueBase + s), N liveState clients in one Node
//     process and one headless Chromium page (the bundled client, reading window values
//     back) receive them; latency = arrival - the moment the UPDATE was sent, on the
//     machine's monotonic clock (the page's performance.now() is mapped onto it by
//     round trips, see calibrate()). Baselines in the same run: the same changes' emission
//     by the handler's shared live$ stream inside the server process (the floor: what
//     the SSE hop and the clients add is the rest), and windows with only 1 Node client
//     (plus the page) connected, alternating with N. The server also reports how long
//     after its emission each change had been written to every connection.
//     The Node figures are those of N clients sharing one process (one event loop works
//     through N copies of every change); the page has a renderer of its own.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import type { ClientsCommand, ClientsMemory, ClientsResult, LiveClientsArgs, Opened, Waited } from '../jobs/live-clients.js';
import type { LiveServerArgs, ServerCommand, ServerMemory, ServerResult } from '../jobs/live-server.js';
import { CHROMIUM, CHROMIUM_ARGS } from '../../examples/live-table/chromium.js';
import { connectedClient, dropDatabase, watchedTableDatabase } from '../lib/db.js';
import { Job } from '../lib/jobs.js';
import { paced } from '../lib/pacer.js';
import type { Figure, Row } from '../lib/report.js';
import type { BenchServer, Settings } from '../lib/settings.js';
import { nowMs, quantile, sleep, summarize } from '../lib/stats.js';

const table = 'live_rows';
const rows = 100;
/** The writer's values: quota = valueBase + s, above every initial quota (id * 1000). */
const valueBase = 1_000_000_000;
/**
 * UPDATEs per second, in total: each is one SSE event per connection, 5k events/s with
 * 1,000 clients. The one process holding the 1,000 Node clients needs about 0.1 ms per
 * event and is saturated from about 10/s on a 2-core machine (see bench/README.md);
 * BENCH_LIVE_RATE=<n> measures at another rate.
 */
const rate = Number(process.env.BENCH_LIVE_RATE ?? 5);
/** Length of one latency window (50 changes at 5/s). */
const windowMsFor = (settings: Settings) => (settings.quick ? 2000 : 10_000);
/** Clients opened at a time (each batch waits for its snapshots). */
const openBatch = 100;

const chromiumPath = CHROMIUM;
const chromiumArgs = CHROMIUM_ARGS;

const KiB = 1024;
const MiB = 2 ** 20;

type MemoryMode = 'pgtide' | 'plain';

interface MemoryRun {
  readonly mode: MemoryMode;
  readonly zero: ServerMemory;
  /** One connection: for pgtide the shared live$ stream and its 100 rows exist from here on. */
  readonly one: ServerMemory;
  readonly all: ServerMemory;
  readonly clientZero: ClientsMemory;
  readonly clientAll: ClientsMemory;
  readonly openMs: number;
  readonly server: ServerResult;
}

type LatencyMode = 'N' | '1';

interface Quantiles {
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly samples: number;
  /** Expected arrivals that did not come (within 10 s of the last write). */
  readonly lost: number;
}

interface LatencyRun {
  readonly mode: LatencyMode;
  readonly nodeClients: number;
  readonly sent: number;
  readonly rate: number;
  readonly node: Quantiles;
  readonly page: Quantiles | undefined;
  readonly emission: Quantiles;
  /** From a change's emission until the server wrote it to every connection (ms). */
  readonly fanout: Quantiles;
  /** The synchronous part of that: liveHandler's loop over the connections (ms). */
  readonly loop: Quantiles;
  /** Median time from sending an UPDATE to its result (the commit's round trip). */
  readonly commitMs: number;
  /** CPU ms per second of the server and the clients process during the window. */
  readonly serverCpu: number;
  readonly clientsCpu: number;
  /** Uncertainty of the page's clock mapping (half the best round trip), ms. */
  readonly pageClockMs: number | undefined;
  /** Node clients that had not received every change when the wait ended. */
  readonly behind: number;
}

function quantiles(samples: number[], expected: number): Quantiles {
  return {
    p50: quantile(samples, 0.5),
    p99: quantile(samples, 0.99),
    max: quantile(samples, 1),
    samples: samples.length,
    lost: expected - samples.length,
  };
}

/** A job speaking the 'command' protocol of live-server / live-clients. */
async function ask<T>(job: Job, command: ServerCommand | ClientsCommand, answer: string): Promise<T> {
  job.send('command', command);
  return job.receive<T>(answer);
}

async function startServer(args: LiveServerArgs): Promise<{ job: Job; base: string }> {
  const job = new Job('live-server', args);
  try {
    const { port } = await job.receive<{ port: number }>('ready');
    return { job, base: `http://127.0.0.1:${port}` };
  } catch (error) {
    job.kill();
    throw error;
  }
}

async function stopJob<T>(job: Job): Promise<T> {
  job.send('command', { kind: 'stop' });
  try {
    return await job.result<T>();
  } finally {
    job.kill();
  }
}

/**
 * Offset of the page's performance.now() from this process's nowMs(): the round trip
 * (page.evaluate) with the smallest duration of 30, its midpoint taken as the page's
 * reading. Returns the offset and its uncertainty (half that round trip).
 */
async function calibrate(page: Page): Promise<{ offset: number; uncertainty: number }> {
  let best = { offset: 0, uncertainty: Number.POSITIVE_INFINITY };
  for (let index = 0; index < 30; index += 1) {
    const before = nowMs();
    const pageNow = await page.evaluate(() => performance.now());
    const after = nowMs();
    const uncertainty = (after - before) / 2;
    if (uncertainty < best.uncertainty) best = { offset: pageNow - (before + after) / 2, uncertainty };
  }
  return best;
}

export async function liveUiRow(server: BenchServer, settings: Settings): Promise<Row> {
  const clientCount = settings.quick ? 100 : 1000;
  const label = clientCount >= 1000 ? `${clientCount / 1000}k` : String(clientCount);
  const url = await watchedTableDatabase(server.url, 'bench_live_ui', table, rows);

  const notes: string[] = [];
  const clients = new Job('live-clients', { rows, valueBase } satisfies LiveClientsArgs);
  let clientsResult: ClientsResult | undefined;
  const memoryRuns: MemoryRun[] = [];
  const latencyRuns: LatencyRun[] = [];
  let chromium: { context: BrowserContext; page: Page; userDataDir: string } | undefined;
  let latencyServer: { job: Job; base: string } | undefined;
  let latencyServerResult: ServerResult | undefined;
  let writer: Awaited<ReturnType<typeof connectedClient>> | undefined;
  const started = nowMs();
  try {
    await clients.receive('ready');

    // 1. Memory of idle connections, a fresh server process per measurement.
    const memoryModes: MemoryMode[] = ['pgtide', 'plain'];
    for (let run = 0; run < settings.runs; run += 1) {
      for (let index = 0; index < memoryModes.length; index += 1) {
        const mode = memoryModes[(run + index) % memoryModes.length]!;
        const path = mode === 'pgtide' ? '/live' : '/plain';
        const { job, base } = await startServer({ url, table, rows, valueBase, maxSeq: 0, page: false });
        try {
          await sleep(settings.warmupMs);
          const clientZero = await ask<ClientsMemory>(clients, { kind: 'memory' }, 'memory');
          const zero = await ask<ServerMemory>(job, { kind: 'memory' }, 'memory');
          await ask<Opened>(clients, { kind: 'open', url: `${base}${path}`, count: 1, batch: 1, snapshot: mode === 'pgtide' }, 'opened');
          await sleep(100);
          const one = await ask<ServerMemory>(job, { kind: 'memory' }, 'memory');
          const opened = await ask<Opened>(clients, { kind: 'open', url: `${base}${path}`, count: clientCount - 1, batch: openBatch, snapshot: mode === 'pgtide' }, 'opened');
          // Idle: let every socket settle (nothing is written until the 15 s heartbeat).
          await sleep(settings.warmupMs);
          const all = await ask<ServerMemory>(job, { kind: 'memory' }, 'memory');
          const clientAll = await ask<ClientsMemory>(clients, { kind: 'memory' }, 'memory');
          const held = mode === 'pgtide' ? all.live : all.plain;
          if (held !== clientCount) notes.push(`memory run ${run} (${mode}): the server held ${held} connections, not ${clientCount}`);
          await ask(clients, { kind: 'close', keep: 0 }, 'closed');
          memoryRuns.push({ mode, zero, one, all, clientZero, clientAll, openMs: opened.ms, server: await stopJob<ServerResult>(job) });
        } finally {
          job.kill();
        }
      }
    }

    // 2. Latency: one server process, N Node clients and the page connected throughout (N
    // windows) or 1 Node client and the page (1 windows).
    const windowMs = windowMsFor(settings);
    const perWindow = Math.round((windowMs / 1000) * rate);
    const maxSeq = (settings.runs * 2 + 2) * perWindow + 10;
    latencyServer = await startServer({ url, table, rows, valueBase, maxSeq, page: true });
    const { job: serverJob, base } = latencyServer;
    const opened = await ask<Opened>(clients, { kind: 'open', url: `${base}/live`, count: clientCount, batch: openBatch, snapshot: true }, 'opened');
    notes.push(`${clientCount} liveState clients connected in ${(opened.ms / 1000).toFixed(1)} s (${openBatch} at a time, each batch waiting for its snapshots)`);
    let nodeClients = clientCount;
    // The page connects after the Node clients (again after each reconnection of theirs):
    // it is the last connection the server writes each change to.
    const loadPage = async (page: Page) => {
      await page.goto(`${base}/page`);
      await page.waitForFunction(() => (globalThis as unknown as { __bench?: { status: string } }).__bench?.status === 'live', undefined, { timeout: 30_000 });
    };
    if (existsSync(chromiumPath)) {
      const { chromium: launcher } = await import('playwright-core');
      const userDataDir = mkdtempSync(join(tmpdir(), 'pgtide-bench-chromium-'));
      try {
        const context = await launcher.launchPersistentContext(userDataDir, { executablePath: chromiumPath, headless: true, args: chromiumArgs, timeout: 60_000 });
        const page = context.pages()[0] ?? (await context.newPage());
        chromium = { context, page, userDataDir };
      } catch (error) {
        rmSync(userDataDir, { recursive: true, force: true });
        notes.push(`Chromium at ${chromiumPath} did not start (${String(error).split('\n')[0]}): the page's figures are left out`);
      }
      if (chromium) await loadPage(chromium.page);
    } else {
      notes.push(`no Chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM_PATH): the page's figures are left out`);
    }
    writer = await connectedClient(url);
    const update = { name: 'live_update', text: `UPDATE ${table} SET quota = $2 WHERE id = $1` };
    let nextSeq = 0;
    const sentAt = new Float64Array(maxSeq + 1);
    const commitDurations = new Float64Array(maxSeq + 1);

    const measure = async (mode: LatencyMode, durationMs: number): Promise<LatencyRun> => {
      const wanted = mode === 'N' ? clientCount : 1;
      if (nodeClients > wanted) {
        await ask(clients, { kind: 'close', keep: wanted }, 'closed');
      } else if (nodeClients < wanted) {
        await ask<Opened>(clients, { kind: 'open', url: `${base}/live`, count: wanted - nodeClients, batch: openBatch, snapshot: true }, 'opened');
        if (chromium) await loadPage(chromium.page);
      }
      nodeClients = wanted;
      const count = Math.round((durationMs / 1000) * rate);
      const from = nextSeq;
      const to = from + count - 1;
      await ask(clients, { kind: 'record', from, to }, 'recording');
      const clock = chromium ? await calibrate(chromium.page) : undefined;
      await chromium?.page.evaluate((first) => {
        const bench = (globalThis as unknown as { __bench: { expect: number; arrivals: number[] } }).__bench;
        bench.expect = first;
        bench.arrivals = [];
      }, from);
      const cpuBefore = [await ask<number>(serverJob, { kind: 'cpu' }, 'cpu'), await ask<number>(clients, { kind: 'cpu' }, 'cpu')];
      const start = nowMs();
      const achieved = await paced(count, rate, async () => {
        const seq = nextSeq++;
        const sent = nowMs();
        sentAt[seq] = sent;
        await writer!.query({ ...update, values: [1 + (seq % rows), valueBase + seq] });
        commitDurations[seq] = nowMs() - sent;
      });
      const waited = await ask<Waited>(clients, { kind: 'wait', to, timeoutMs: 10_000 }, 'waited');
      if (chromium) {
        await chromium.page
          .waitForFunction((last) => (globalThis as unknown as { __bench: { expect: number } }).__bench.expect > last, to, { timeout: 10_000, polling: 20 })
          .catch(() => undefined);
      }
      const seconds = (nowMs() - start) / 1000;
      const cpuAfter = [await ask<number>(serverJob, { kind: 'cpu' }, 'cpu'), await ask<number>(clients, { kind: 'cpu' }, 'cpu')];
      const arrivals = await ask<Float64Array>(clients, { kind: 'collect' }, 'arrivals');
      const emitted = await ask<{ at: Float64Array; loop: Float64Array; written: Float64Array }>(serverJob, { kind: 'collect', from, to }, 'emitted');
      const node: number[] = [];
      for (let index = 0; index < arrivals.length; index += 1) {
        const at = arrivals[index]!;
        if (!Number.isNaN(at)) node.push(at - sentAt[from + (index % count)]!);
      }
      const emission: number[] = [];
      emitted.at.forEach((at, index) => Number.isNaN(at) || emission.push(at - sentAt[from + index]!));
      const measured = (values: Float64Array) => [...values].filter((ms) => !Number.isNaN(ms));
      let page: Quantiles | undefined;
      if (chromium && clock) {
        const pairs = await chromium.page.evaluate(() => {
          const bench = (globalThis as unknown as { __bench: { expect: number; arrivals: number[] } }).__bench;
          bench.expect = -1;
          return bench.arrivals;
        });
        const samples: number[] = [];
        for (let index = 0; index + 1 < pairs.length; index += 2) {
          const seq = pairs[index]!;
          if (seq >= from && seq <= to) samples.push(pairs[index + 1]! - clock.offset - sentAt[seq]!);
        }
        page = quantiles(samples, count);
      }
      return {
        mode,
        nodeClients: wanted,
        sent: count,
        rate: achieved,
        node: quantiles(node, count * wanted),
        page,
        emission: quantiles(emission, count),
        fanout: quantiles(measured(emitted.written), count),
        loop: quantiles(measured(emitted.loop), count),
        commitMs: quantile(commitDurations.subarray(from, to + 1), 0.5),
        serverCpu: (cpuAfter[0]! - cpuBefore[0]!) / seconds,
        clientsCpu: (cpuAfter[1]! - cpuBefore[1]!) / seconds,
        pageClockMs: clock?.uncertainty,
        behind: waited.behind,
      };
    };

    const latencyModes: LatencyMode[] = ['N', '1'];
    for (const mode of latencyModes) await measure(mode, settings.warmupMs);
    for (let run = 0; run < settings.runs; run += 1) {
      for (let index = 0; index < latencyModes.length; index += 1) {
        latencyRuns.push(await measure(latencyModes[(run + index) % latencyModes.length]!, windowMs));
      }
    }
  } finally {
    await writer?.end();
    if (chromium) {
      await chromium.context.close().catch(() => undefined);
      rmSync(chromium.userDataDir, { recursive: true, force: true });
    }
    try {
      clientsResult = await stopJob<ClientsResult>(clients);
    } catch (error) {
      notes.push(`clients job: ${String(error)}`);
    }
    if (latencyServer) {
      try {
        latencyServerResult = await stopJob<ServerResult>(latencyServer.job);
      } catch (error) {
        notes.push(`latency server job: ${String(error)}`);
      }
    }
    await dropDatabase(server.url, 'bench_live_ui');
  }

  // Memory figures: per run, pgtide and baseline are the two measurements of that run.
  const memoryOf = (mode: MemoryMode) => memoryRuns.filter((run) => run.mode === mode);
  const perConnection = (run: MemoryRun, field: 'rss' | 'heapUsed') => (run.all[field] - run.zero[field]) / clientCount;
  const memoryFigure = (metric: string, unit: string, value: (run: MemoryRun) => number): Figure => {
    const tide = memoryOf('pgtide').map(value);
    const plain = memoryOf('plain').map(value);
    return {
      metric,
      unit,
      pgtide: summarize(tide),
      baselines: [{ name: 'plain node:http SSE, heartbeats only', value: summarize(plain), ratio: summarize(tide.map((v, index) => v / plain[index]!)) }],
    };
  };
  const figures: Figure[] = [
    memoryFigure('server RSS per idle connection', 'KiB', (run) => perConnection(run, 'rss') / KiB),
    memoryFigure(`server RSS, ${label} idle connections`, 'MiB', (run) => (run.all.rss - run.zero.rss) / MiB),
    memoryFigure('server heapUsed per idle connection (after GC)', 'KiB', (run) => perConnection(run, 'heapUsed') / KiB),
    memoryFigure(`server heapUsed, ${label} idle connections`, 'MiB', (run) => (run.all.heapUsed - run.zero.heapUsed) / MiB),
    memoryFigure('client process heapUsed per liveState client', 'KiB', (run) => (run.clientAll.heapUsed - run.clientZero.heapUsed) / clientCount / KiB),
  ];

  // Latency figures: N windows against the same windows' live$ emission and against the 1-client windows.
  const windowsOf = (mode: LatencyMode) => latencyRuns.filter((run) => run.mode === mode);
  const full = windowsOf('N');
  const single = windowsOf('1');
  const latencyFigure = (who: 'node' | 'page', metric: 'p50' | 'p99'): Figure => {
    const value = (run: LatencyRun) => (who === 'node' ? run.node[metric] : (run.page?.[metric] ?? Number.NaN));
    const measured = full.map(value);
    const floor = full.map((run) => run.emission[metric]);
    const alone = single.map(value);
    return {
      metric: who === 'node' ? `${label} Node clients: ${metric} from send` : `Chromium page: ${metric} from send`,
      unit: 'ms',
      pgtide: summarize(measured),
      baselines: [
        { name: "server's shared live$ emission (same changes)", value: summarize(floor), ratio: summarize(measured.map((v, index) => v / floor[index]!)) },
        {
          name: who === 'node' ? (chromium ? '1 Node client (+ the page)' : '1 Node client') : 'with 1 Node client',
          value: summarize(alone),
          ratio: summarize(measured.map((v, index) => v / alone[index]!)),
        },
      ],
    };
  };
  figures.push(latencyFigure('node', 'p50'), latencyFigure('node', 'p99'));
  if (chromium) figures.push(latencyFigure('page', 'p50'), latencyFigure('page', 'p99'));
  const fanoutN = full.map((run) => run.fanout.p50);
  const fanout1 = single.map((run) => run.fanout.p50);
  figures.push({
    metric: `server: emission -> written to all ${chromium ? clientCount + 1 : clientCount} connections, p50`,
    unit: 'ms',
    pgtide: summarize(fanoutN),
    baselines: [{ name: `${chromium ? 2 : 1} connection(s)`, value: summarize(fanout1), ratio: summarize(fanoutN.map((v, index) => v / fanout1[index]!)) }],
  });

  const lossy = latencyRuns.filter((run) => run.node.lost > 0 || (run.page?.lost ?? 0) > 0 || run.emission.lost > 0);
  if (lossy.length > 0) {
    notes.push(`${lossy.length} window(s) with changes that did not arrive within 10 s: ${JSON.stringify(lossy.map((run) => ({ mode: run.mode, node: run.node.lost, page: run.page?.lost, emission: run.emission.lost, behind: run.behind })))}`);
  }
  const slow = latencyRuns.filter((run) => run.rate < 0.9 * rate);
  if (slow.length > 0) notes.push(`${slow.length} window(s) wrote below 90% of ${rate}/s: ${slow.map((run) => Math.round(run.rate)).join(', ')}`);
  if (clientsResult && (clientsResult.reconnects > 0 || clientsResult.laterSnapshots > 0)) {
    notes.push(`Node clients: ${clientsResult.reconnects} reconnect(s), ${clientsResult.laterSnapshots} later snapshot(s) (slow/reset)`);
  }
  const cpu = (runs: LatencyRun[], field: 'serverCpu' | 'clientsCpu') => summarize(runs.map((run) => run[field])).median;
  // CPU per SSE event: the server's extra CPU for N - 1 more connections, the clients process's for its N clients.
  const serverPerEvent = ((cpu(full, 'serverCpu') - cpu(single, 'serverCpu')) * 1000) / (rate * (clientCount - 1));
  const clientPerEvent = (cpu(full, 'clientsCpu') * 1000) / (rate * clientCount);
  notes.push(
    `CPU ms per second during the ${label}-client windows: server process ${cpu(full, 'serverCpu').toFixed(0)}, clients process ${cpu(full, 'clientsCpu').toFixed(0)} ` +
      `(1-client windows: ${cpu(single, 'serverCpu').toFixed(0)}, ${cpu(single, 'clientsCpu').toFixed(0)}): about ${serverPerEvent.toFixed(0)} µs of server CPU per change and connection, ` +
      `${clientPerEvent.toFixed(0)} µs in the clients process per change and liveState client; median UPDATE round trip ${summarize(latencyRuns.map((run) => run.commitMs)).median.toFixed(2)} ms`,
  );
  notes.push(
    `of the server's ${summarize(full.map((run) => run.fanout.p50)).median.toFixed(1)} ms from emission to the last connection's write (p50), liveHandler's synchronous loop over the connections ` +
      `(encoding and queueing each one's event) is ${summarize(full.map((run) => run.loop.p50)).median.toFixed(1)} ms, node:http's writes (one writev per connection, after the loop) the rest` +
      (chromium ? '; the page connected last, so its event is written last' : ''),
  );
  if (chromium) {
    notes.push(`page clock mapped to within ±${Math.max(...latencyRuns.map((run) => run.pageClockMs ?? 0)).toFixed(2)} ms (half the best page.evaluate round trip)`);
  }
  const tideRuns = memoryOf('pgtide');
  notes.push(
    `server with 0 connections: RSS ${summarize(tideRuns.map((run) => run.zero.rss / MiB)).median.toFixed(0)} MiB; ` +
      `the first liveHandler connection (shared live$ stream, ${rows} rows) adds ${summarize(tideRuns.map((run) => (run.one.rss - run.zero.rss) / MiB)).median.toFixed(1)} MiB RSS, ` +
      `${summarize(tideRuns.map((run) => (run.one.heapUsed - run.zero.heapUsed) / KiB)).median.toFixed(0)} KiB heap`,
  );
  return {
    id: 'live-ui',
    scenario: `live UI over SSE: ${label} idle connections; commit -> liveState at ${rate} UPDATEs/s (${label} Node clients${chromium ? ' + 1 Chromium page' : ''})`,
    figures,
    target: 'informational (issue figures)',
    met: undefined,
    notes,
    extra: {
      clients: clientCount,
      rows,
      rate,
      windowMs: windowMsFor(settings),
      seconds: (nowMs() - started) / 1000,
      memoryRuns,
      latencyRuns,
      clientsResult,
      latencyServerResult,
      serverCpuUsPerEvent: serverPerEvent,
      clientCpuUsPerEvent: clientPerEvent,
    },
  };
}
