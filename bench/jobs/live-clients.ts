// The Node side of the live-ui row: many pgtide/client liveState() clients in one process
// (Node's global fetch), each a connection of its own to the server job
// (bench/jobs/live-server.ts). For the latency part each client records when each change
// arrives, by the writer's sequence number (the parent writes quota = valueBase + s into
// row 1 + s % rows; changes apply in order, so a client looks for the next number in its
// row), on the machine's monotonic clock (lib/stats.ts), which the parent's writer reads too.
//
// Protocol: args -> 'ready'; then 'command' messages (one type, kept in order):
// open { url, count, batch, snapshot } -> 'opened' once `count` more clients got their
// response headers (and, with `snapshot`, their first snapshot), `batch` at a time;
// close { keep } -> 'closed' (unsubscribes all but the first `keep`); memory -> 'memory';
// record { from, to } -> 'recording' (every client looks for `from` next); wait { to,
// timeoutMs } -> 'waited'; collect -> 'arrivals' (client-major Float64Array, NaN where a
// change did not arrive); cpu -> 'cpu'; stop ends the job.
import type { Subscription } from 'rxjs';
import { liveState } from '../../src/client.js';
import type { Channel } from '../worker.js';
import { nowMs, sleep } from '../lib/stats.js';

export interface LiveClientsArgs {
  readonly rows: number;
  readonly valueBase: number;
}

export type ClientsCommand =
  | { readonly kind: 'open'; readonly url: string; readonly count: number; readonly batch: number; readonly snapshot: boolean }
  | { readonly kind: 'close'; readonly keep: number }
  | { readonly kind: 'memory' }
  | { readonly kind: 'record'; readonly from: number; readonly to: number }
  | { readonly kind: 'wait'; readonly to: number; readonly timeoutMs: number }
  | { readonly kind: 'collect' }
  | { readonly kind: 'cpu' }
  | { readonly kind: 'stop' };

export interface ClientsMemory {
  readonly rss: number;
  readonly heapUsed: number;
  readonly clients: number;
}

export interface Waited {
  readonly complete: boolean;
  /** Clients that had not received every change up to `to`. */
  readonly behind: number;
}

export interface Opened {
  readonly clients: number;
  readonly ms: number;
}

export interface ClientsResult {
  /** Emissions with status 'reconnecting' (connection lost), over the whole job. */
  readonly reconnects: number;
  /** Snapshots after a client's first (`reset` or `slow`: it fell behind or could not resume). */
  readonly laterSnapshots: number;
  readonly maxRssMB: number;
  readonly cpuMs: number;
}

interface Client {
  subscription: Subscription | undefined;
  connected: boolean;
  snapshots: number;
  /** Next sequence number to look for, or -1. */
  expect: number;
}

function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
}

export default async function liveClients(args: LiveClientsArgs, channel: Channel): Promise<ClientsResult> {
  const clients: Client[] = [];
  let reconnects = 0;
  let laterSnapshots = 0;
  let recordFrom = 0;
  let span = 0;
  let arrivals = new Float64Array(0);
  let failure: unknown;

  const open = (url: string): Client => {
    const index = clients.length;
    const client: Client = { subscription: undefined, connected: false, snapshots: 0, expect: -1 };
    clients.push(client);
    const fetchCounted: typeof fetch = (input, init) =>
      globalThis.fetch(input, init).then((response) => {
        client.connected = true;
        return response;
      });
    client.subscription = liveState<{ quota: number }>(url, { fetch: fetchCounted }).subscribe({
      next: ({ rows, status }) => {
        const at = nowMs();
        if (status === 'reconnecting') {
          reconnects += 1;
          return;
        }
        if (status === 'snapshot') {
          client.snapshots += 1;
          if (client.snapshots > 1) laterSnapshots += 1;
        }
        if (client.expect < 0 || (status !== 'live' && status !== 'snapshot')) return;
        if (status === 'snapshot') {
          // A fresh snapshot (the client fell behind): what it holds arrived now; numbers it skipped never do.
          let last = client.expect - 1;
          for (const row of rows.values()) {
            const seq = Number(row.quota) - args.valueBase;
            if (seq < client.expect) continue;
            const offset = seq - recordFrom;
            if (offset >= 0 && offset < span) arrivals[index * span + offset] = at;
            last = Math.max(last, seq);
          }
          client.expect = last + 1;
          return;
        }
        for (;;) {
          const row = rows.get(String(1 + (client.expect % args.rows)));
          if (!row || Number(row.quota) !== args.valueBase + client.expect) break;
          const offset = client.expect - recordFrom;
          if (offset >= 0 && offset < span) arrivals[index * span + offset] = at;
          client.expect += 1;
        }
      },
      error: (error: unknown) => {
        failure = error;
      },
    });
    return client;
  };

  channel.send('ready');
  for (;;) {
    const command = await channel.receive<ClientsCommand>('command');
    if (failure) throw new Error(`a liveState client failed: ${String(failure)}`);
    if (command.kind === 'stop') break;
    switch (command.kind) {
      case 'open': {
        const start = nowMs();
        const deadline = start + 60_000;
        for (let opened = 0; opened < command.count; ) {
          const batch: Client[] = [];
          for (; batch.length < command.batch && opened < command.count; opened += 1) batch.push(open(command.url));
          while (!batch.every((client) => client.connected && (!command.snapshot || client.snapshots > 0))) {
            if (failure) throw new Error(`a liveState client failed: ${String(failure)}`);
            if (nowMs() > deadline) throw new Error(`${batch.filter((client) => !client.connected).length} of a batch of ${batch.length} clients did not connect within 60 s`);
            await sleep(5);
          }
        }
        channel.send('opened', { clients: clients.length, ms: nowMs() - start } satisfies Opened);
        break;
      }
      case 'close':
        for (const client of clients.splice(command.keep)) client.subscription?.unsubscribe();
        // Let the aborted requests' sockets close.
        await sleep(200);
        channel.send('closed');
        break;
      case 'memory': {
        collectGarbage();
        await sleep(50);
        collectGarbage();
        const memory = process.memoryUsage();
        channel.send('memory', { rss: memory.rss, heapUsed: memory.heapUsed, clients: clients.length } satisfies ClientsMemory);
        break;
      }
      case 'record':
        recordFrom = command.from;
        span = command.to - command.from + 1;
        arrivals = new Float64Array(clients.length * span).fill(Number.NaN);
        for (const client of clients) client.expect = command.from;
        channel.send('recording');
        break;
      case 'wait': {
        const deadline = nowMs() + command.timeoutMs;
        let behind = clients.filter((client) => client.expect <= command.to).length;
        while (behind > 0 && nowMs() < deadline) {
          await sleep(5);
          behind = clients.filter((client) => client.expect <= command.to).length;
        }
        channel.send('waited', { complete: behind === 0, behind } satisfies Waited);
        break;
      }
      case 'collect':
        // Stop looking: changes after the window are not recorded.
        for (const client of clients) client.expect = -1;
        channel.send('arrivals', arrivals);
        break;
      case 'cpu': {
        const usage = process.cpuUsage();
        channel.send('cpu', (usage.user + usage.system) / 1000);
        break;
      }
    }
  }
  const usage = process.cpuUsage();
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  for (const client of clients) client.subscription?.unsubscribe();
  return { reconnects, laterSnapshots, maxRssMB, cpuMs: (usage.user + usage.system) / 1000 };
}
