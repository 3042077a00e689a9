// The server side of the live-ui row: a node:http server in a process of its own with
//  - GET /live   pgtide/http liveHandler(tide, table) (library defaults: heartbeat 15 s, ...)
//  - GET /plain  the baseline: a minimal SSE handler that sends the same response headers,
//                one comment, then only a heartbeat comment every 15 s to each connection
//                (one shared timer, like liveHandler's), nothing else
//  - GET /page   (with `page`) a page that reads /live with pgtide/client, bundled for the
//                browser with esbuild as examples/live-table/server.ts does, and records
//                when each change arrives (performance.now(), read back by the parent)
//  - GET /client.js  that bundle.
// Each change's emission by the handler's shared live$ stream is recorded on the machine's
// monotonic clock (lib/stats.ts), and how long the handler took to pass it on: it writes
// the change to every connection in one synchronous loop, in the order they connected;
// node:http then sends each connection's bytes (one writev each) from process.nextTick
// callbacks those writes queued, so a nextTick queued after the loop runs once every
// connection's bytes went to its socket. liveHandler gets the real Tide with live$
// wrapped, so the handler runs unchanged and still opens one stream.
//
// Protocol: args -> 'ready' { port }; then 'command' messages (one type, kept in order):
// memory -> 'memory' (after full garbage collections: --expose-gc, see lib/jobs.ts);
// collect { from, to } -> 'emitted' { at, loop, written } (Float64Arrays by sequence
// number: the emission time, the handler's synchronous loop, the time until every
// connection's write was made; NaN where the change was not emitted); cpu -> 'cpu'
// (this process's CPU ms so far); stop ends the job.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Observable } from 'rxjs';
import type { Tide } from '../../src/connect.js';
import type { LiveEvent } from '../../src/types.js';
import { browserClient } from '../../examples/live-table/server.js';
import { liveHandler } from '../../src/http.js';
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface LiveServerArgs {
  readonly url: string;
  readonly table: string;
  /** Rows of the table (ids 1..rows): the writer's sequence number s updates row 1 + s % rows. */
  readonly rows: number;
  /** The writer sets quota = valueBase + s (see bench/scenarios/live-ui.ts). */
  readonly valueBase: number;
  /** Highest sequence number the writer will use. */
  readonly maxSeq: number;
  /** Serve /page and /client.js (the latency part; the memory part leaves them out). */
  readonly page: boolean;
}

export type ServerCommand =
  | { readonly kind: 'memory' }
  | { readonly kind: 'collect'; readonly from: number; readonly to: number }
  | { readonly kind: 'cpu' }
  | { readonly kind: 'stop' };

export interface ServerMemory {
  readonly rss: number;
  readonly heapUsed: number;
  readonly heapTotal: number;
  readonly external: number;
  readonly arrayBuffers: number;
  /** Open connections of liveHandler and of the plain handler. */
  readonly live: number;
  readonly plain: number;
}

export interface ServerResult {
  readonly maxRssMB: number;
  readonly cpuMs: number;
}

/** Same as liveHandler's heartbeat default. */
const heartbeatMs = 15_000;

function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('live-server needs --expose-gc (bench/lib/jobs.ts passes it)');
  gc();
  gc();
}

/** pgtide/client bundled for the page, as the live-table example serves it. */
export const bundleClient = browserClient;

/** The Chromium page: liveState('/live'), an arrival time per sequence number, nothing rendered. */
function pageHtml(rows: number, valueBase: number): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgtide live-ui bench</title></head>
<body><p id="status">connecting</p>
<script type="module">
import { liveState } from '/client.js';
const rowCount = ${rows};
const valueBase = ${valueBase};
// expect: the next sequence number to look for (-1: not recording); arrivals: [seq, performance.now()] pairs.
const bench = (window.__bench = { expect: -1, arrivals: [], status: 'connecting', emissions: 0 });
liveState('/live').subscribe({
  next: ({ rows, status }) => {
    const at = performance.now();
    bench.status = status;
    bench.emissions += 1;
    if (bench.expect < 0 || (status !== 'live' && status !== 'snapshot')) return;
    // The change of the expected sequence number is its row's current quota, in order.
    for (;;) {
      const row = rows.get(String(1 + (bench.expect % rowCount)));
      if (!row || Number(row.quota) !== valueBase + bench.expect) break;
      bench.arrivals.push(bench.expect, at);
      bench.expect += 1;
    }
  },
  error: (error) => { bench.status = 'error: ' + error.message; },
});
</script></body></html>
`;
}

export default async function liveServer(args: LiveServerArgs, channel: Channel): Promise<ServerResult> {
  const tide = await connectTide(args.url);
  const emittedAt = new Float64Array(args.maxSeq + 1).fill(Number.NaN);
  const loopMs = new Float64Array(args.maxSeq + 1).fill(Number.NaN);
  const writtenMs = new Float64Array(args.maxSeq + 1).fill(Number.NaN);
  // liveHandler gets the Tide as is, except that its live$ also records emission times
  // and the time the handler's subscriber took for each change.
  const recording = new Proxy(tide, {
    get(target, property, receiver) {
      if (property !== 'live$') {
        const value = Reflect.get(target, property, receiver) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      }
      return (...live: Parameters<Tide['live$']>) =>
        new Observable<LiveEvent<unknown>>((subscriber) =>
          target.live$(...live).subscribe({
            next: (event) => {
              const seq = event.kind === 'change' ? Number((event.change.new as { quota?: unknown } | undefined)?.quota) - args.valueBase : Number.NaN;
              if (!(seq >= 0 && seq <= args.maxSeq && Number.isNaN(emittedAt[seq]!))) {
                subscriber.next(event);
                return;
              }
              const start = nowMs();
              emittedAt[seq] = start;
              subscriber.next(event);
              loopMs[seq] = nowMs() - start;
              process.nextTick(() => (writtenMs[seq] = nowMs() - start));
            },
            error: (error: unknown) => subscriber.error(error),
            complete: () => subscriber.complete(),
          }),
        );
    },
  });
  const live = liveHandler(recording, args.table);

  // The baseline: idle SSE connections that only get heartbeats.
  const plain = new Set<ServerResponse>();
  const plainBeat = setInterval(() => {
    for (const response of plain) response.write(': heartbeat\n\n');
  }, heartbeatMs);
  plainBeat.unref();
  const plainHandler = (request: IncomingMessage, response: ServerResponse) => {
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    response.write(': connected\n\n');
    plain.add(response);
    request.on('close', () => plain.delete(response));
  };

  const client = args.page ? await bundleClient() : '';
  const page = pageHtml(args.rows, args.valueBase);
  const send = (response: ServerResponse, type: string, body: string) =>
    response.writeHead(200, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' }).end(body);
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (path === '/live') live(request, response);
    else if (path === '/plain') plainHandler(request, response);
    else if (args.page && path === '/page') send(response, 'text/html', page);
    else if (args.page && path === '/client.js') send(response, 'text/javascript', client);
    else response.writeHead(404).end();
  });
  // Up to 1,000 clients connect at about the same time: a listen backlog for all of them.
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host: '127.0.0.1', backlog: 2048 }, resolve);
  });
  channel.send('ready', { port: (server.address() as AddressInfo).port });

  for (;;) {
    const command = await channel.receive<ServerCommand>('command');
    if (command.kind === 'stop') break;
    if (command.kind === 'memory') {
      collectGarbage();
      await sleep(50);
      collectGarbage();
      const memory = process.memoryUsage();
      channel.send('memory', {
        rss: memory.rss,
        heapUsed: memory.heapUsed,
        heapTotal: memory.heapTotal,
        external: memory.external,
        arrayBuffers: memory.arrayBuffers,
        live: live.connections,
        plain: plain.size,
      } satisfies ServerMemory);
    } else if (command.kind === 'collect') {
      const range = (values: Float64Array) => values.slice(command.from, command.to + 1);
      channel.send('emitted', { at: range(emittedAt), loop: range(loopMs), written: range(writtenMs) });
    } else {
      const usage = process.cpuUsage();
      channel.send('cpu', (usage.user + usage.system) / 1000);
    }
  }
  const usage = process.cpuUsage();
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  live.close();
  for (const response of plain) response.end();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await tide.close();
  return { maxRssMB, cpuMs: (usage.user + usage.system) / 1000 };
}
