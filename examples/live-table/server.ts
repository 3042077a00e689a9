// A web page that shows a table and stays in sync with it: one `tide.state$()` shared
// by every browser, pushed with Server-Sent Events as a snapshot, then deltas.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { shareReplay, type Observable } from 'rxjs';
// In an application: import type { Tide } from 'pgtide';
import type { Tide } from '../../src/connect.js';
import type { RowData } from '../../src/types.js';

export interface LiveTableOptions {
  /** A connected Tide (`state$`, and `waitFor` to confirm writes). */
  readonly tide: Pick<Tide, 'state$' | 'waitFor'>;
  /**
   * Writes one row sent with `POST /rows` (a JSON object) and returns its transaction id
   * (`pg_current_xact_id()::text`). The response waits until every open page's stream
   * has the change (`tide.waitFor`). Without it, `POST /rows` is not served.
   */
  readonly write?: (row: RowData) => Promise<string>;
  /** The table to show: `'name'` or `'schema.name'`. */
  readonly table: string;
  /** The columns shown, in order; include the primary key to show it. Updates of other columns are not sent. */
  readonly columns: readonly string[];
  /** Page heading. Default: the table name. */
  readonly title?: string;
  /** Milliseconds between SSE comments that keep proxies from closing a quiet stream. Default 15000. */
  readonly heartbeatMs?: number;
}

/** One row as the page receives it: its key (see `stateKey`) and its values. */
export interface WireRow {
  readonly key: string;
  readonly row: RowData;
}

/** The first event on each connection: every row. */
export interface SnapshotEvent {
  readonly rows: readonly WireRow[];
}

/** Every later event: rows added or changed, keys removed. */
export interface DeltaEvent {
  readonly upsert: readonly WireRow[];
  readonly remove: readonly string[];
}

export interface LiveTableServer {
  readonly server: Server;
  /** Starts listening (port 0: any free port); resolves to the page's URL. */
  listen(port?: number, host?: string): Promise<string>;
  /** Ends every event stream and stops the server. */
  close(): Promise<void>;
}

/**
 * `GET /` serves the page, `GET /events` the event stream. All connections share one
 * `state$` subscription (`shareReplay`): a new browser gets the current rows as its
 * snapshot, then the changes. When the last browser leaves, the subscription ends;
 * the next one reads a fresh snapshot.
 */
export function createLiveTableServer(options: LiveTableOptions): LiveTableServer {
  const state$: Observable<ReadonlyMap<string, RowData>> = options.tide
    .state$(options.table, { columns: [...options.columns] })
    .pipe(shareReplay({ bufferSize: 1, refCount: true }));
  const page = renderPage(options.title ?? options.table, options.columns);
  const heartbeatMs = options.heartbeatMs ?? 15_000;

  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (request.method === 'GET' && path === '/') {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      response.end(page);
    } else if (request.method === 'GET' && path === '/events') {
      streamEvents(request, response, state$, heartbeatMs);
    } else if (request.method === 'POST' && path === '/rows' && options.write) {
      void confirmWrite(request, response, options.write, options.tide);
    } else {
      response.writeHead(404, { 'content-type': 'text/plain' });
      response.end('not found\n');
    }
  });

  return {
    server,
    listen: (port = 0, host = '127.0.0.1') =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          const address = server.address() as AddressInfo;
          resolve(`http://${host}:${address.port}/`);
        });
      }),
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        // Event streams never end on their own.
        server.closeAllConnections();
      }),
  };
}

/**
 * Read your writes: answers only once the change is in the shared state every page
 * follows, so the client that wrote sees it on its page when the response arrives.
 */
async function confirmWrite(
  request: IncomingMessage,
  response: ServerResponse,
  write: (row: RowData) => Promise<string>,
  tide: Pick<Tide, 'waitFor'>,
): Promise<void> {
  try {
    let body = '';
    for await (const chunk of request) body += String(chunk);
    const row = JSON.parse(body) as RowData;
    const txid = await write(row);
    await tide.waitFor(txid, { timeout: 5000 });
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ txid, confirmed: true }));
  } catch (error) {
    response.writeHead(400, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ error: String(error) }));
  }
}

function streamEvents(
  request: IncomingMessage,
  response: ServerResponse,
  state$: Observable<ReadonlyMap<string, RowData>>,
  heartbeatMs: number,
): void {
  response.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
  });
  const send = (event: string, data: unknown) => response.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  let previous: ReadonlyMap<string, RowData> | undefined;
  const subscription = state$.subscribe({
    next: (rows) => {
      if (previous === undefined) {
        send('snapshot', { rows: [...rows].map(([key, row]) => ({ key, row })) } satisfies SnapshotEvent);
      } else {
        const delta = diff(previous, rows);
        if (delta.upsert.length > 0 || delta.remove.length > 0) send('delta', delta);
      }
      previous = rows;
    },
    // The page shows it; EventSource then reconnects and gets a fresh snapshot.
    error: (error: unknown) => {
      send('failure', { message: error instanceof Error ? error.message : String(error) });
      response.end();
    },
    complete: () => response.end(),
  });
  const heartbeat = setInterval(() => response.write(': keep-alive\n\n'), heartbeatMs);
  request.on('close', () => {
    clearInterval(heartbeat);
    subscription.unsubscribe();
  });
}

/**
 * What changed between two states. `state$` emits a new Map per change but keeps the
 * objects of unchanged rows, so comparing by reference finds the changed ones.
 */
export function diff(previous: ReadonlyMap<string, RowData>, next: ReadonlyMap<string, RowData>): DeltaEvent {
  const upsert: WireRow[] = [];
  for (const [key, row] of next) if (previous.get(key) !== row) upsert.push({ key, row });
  const remove = [...previous.keys()].filter((key) => !next.has(key));
  return { upsert, remove };
}

/** JSON that is safe inside a `<script>` element. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

function renderPage(title: string, columns: readonly string[]): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${escapeHtml(title)}</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2430; }
  table { border-collapse: collapse; min-width: 24rem; }
  th, td { border-bottom: 1px solid #d8dde6; padding: .35rem .8rem; text-align: left; }
  th { background: #f1f4f8; }
  td[data-column] { font-variant-numeric: tabular-nums; }
  tr.changed td { animation: flash 1.2s ease-out; }
  @keyframes flash { from { background: #fff3b0; } to { background: transparent; } }
  #status[data-state="live"] { color: #137333; }
  #status[data-state="error"], #status[data-state="reconnecting"] { color: #b3261e; }
</style>
</head>
<body>
<h1>${escapeHtml(title)}</h1>
<p><span id="status" data-state="connecting">connecting</span> · <span id="count">0</span> rows</p>
<table id="rows">
  <thead><tr>${columns.map((column) => `<th>${escapeHtml(column)}</th>`).join('')}</tr></thead>
  <tbody></tbody>
</table>
<script>
const columns = ${scriptJson(columns)};
const tbody = document.querySelector('tbody');
const statusLine = document.getElementById('status');
const count = document.getElementById('count');
const rows = new Map(); // key -> <tr>
const order = new Intl.Collator(undefined, { numeric: true });

function setStatus(state, text) {
  statusLine.dataset.state = state;
  statusLine.textContent = text ?? state;
}

function show(value) {
  if (value === null || value === undefined) return '';
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

// The body stays sorted by key: a new row goes before the first row with a greater key
// (or, for the already sorted snapshot, at the end).
function upsert({ key, row }, highlight, append) {
  let tr = rows.get(key);
  if (!tr) {
    tr = document.createElement('tr');
    tr.dataset.key = key;
    for (const column of columns) {
      const td = document.createElement('td');
      td.dataset.column = column;
      tr.append(td);
    }
    const next = append ? null : [...tbody.children].find((other) => order.compare(other.dataset.key, key) > 0);
    tbody.insertBefore(tr, next ?? null);
    rows.set(key, tr);
  }
  // textContent, never innerHTML: row values are data, not markup.
  columns.forEach((column, index) => (tr.children[index].textContent = show(row[column])));
  if (highlight) {
    tr.classList.remove('changed');
    void tr.offsetWidth;
    tr.classList.add('changed');
  }
}

function remove(key) {
  rows.get(key)?.remove();
  rows.delete(key);
}

const events = new EventSource('events');
events.addEventListener('snapshot', (event) => {
  const { rows: list } = JSON.parse(event.data);
  tbody.replaceChildren();
  rows.clear();
  list.sort((a, b) => order.compare(a.key, b.key));
  for (const entry of list) upsert(entry, false, true);
  count.textContent = rows.size;
  setStatus('live');
});
events.addEventListener('delta', (event) => {
  const delta = JSON.parse(event.data);
  for (const key of delta.remove) remove(key);
  for (const entry of delta.upsert) upsert(entry, true, false);
  count.textContent = rows.size;
});
events.addEventListener('failure', (event) => setStatus('error', 'error: ' + JSON.parse(event.data).message));
events.addEventListener('error', () => {
  if (statusLine.dataset.state !== 'error') setStatus('reconnecting');
});
</script>
</body>
</html>
`;
}
