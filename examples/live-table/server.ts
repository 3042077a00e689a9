// A web page that shows a table and stays in sync with it: pgtide/http serves the rows
// (one shared stream for every browser), pgtide/client keeps them live in the page.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
// In an application: import { liveHandler } from 'pgtide/http'; import type { Tide } from 'pgtide';
import type { Tide } from '../../src/connect.js';
import { liveHandler, type LiveAccess } from '../../src/http.js';
import type { RowData } from '../../src/types.js';

export interface LiveTableOptions {
  /** A connected Tide (`live$` behind the handler, `waitFor` to confirm writes). */
  readonly tide: Tide;
  /** The table to show, and the columns shown (include the key to show it). */
  readonly table: string;
  readonly columns: readonly string[];
  /** Page heading. Default: the table name. */
  readonly title?: string;
  /** Which rows a request may see (see pgtide/http); the page passes its own query string on. */
  readonly authorize?: (request: IncomingMessage) => LiveAccess<RowData> | Promise<LiveAccess<RowData>>;
  /** Writes one row sent with `POST /rows`, returning its `pg_current_xact_id()::text`; the answer waits for `tide.waitFor`. */
  readonly write?: (row: RowData) => Promise<string>;
}

export interface LiveTableServer {
  readonly server: Server;
  /** Starts listening (port 0: any free port); resolves to the page's URL. */
  listen(port?: number, host?: string): Promise<string>;
  close(): Promise<void>;
}

/** `GET /` the page, `GET /live` the rows (pgtide/http), `GET /client.js` pgtide/client for the browser, `POST /rows` a write. */
export function createLiveTableServer(options: LiveTableOptions): LiveTableServer {
  const live = liveHandler(options.tide, options.table, {
    columns: options.columns,
    ...(options.authorize ? { authorize: options.authorize } : {}),
  });
  const page = renderPage(options.title ?? options.table, options.columns);
  const client = browserClient();
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (request.method === 'GET' && path === '/') send(response, 'text/html', page);
    else if (request.method === 'GET' && path === '/live') live(request, response);
    else if (request.method === 'GET' && path === '/client.js') void client.then((code) => send(response, 'text/javascript', code));
    else if (request.method === 'POST' && path === '/rows' && options.write) void confirmWrite(request, response, options.write, options.tide);
    else response.writeHead(404).end();
  });
  return {
    server,
    listen: (port = 0, host = '127.0.0.1') =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => resolve(`http://${host}:${(server.address() as AddressInfo).port}/`));
      }),
    close: () =>
      new Promise((resolve) => {
        live.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(response: ServerResponse, type: string, body: string): void {
  response.writeHead(200, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' }).end(body);
}

/** pgtide/client and rxjs as one ES module for the page (an application's bundler does this). */
export async function browserClient(): Promise<string> {
  const result = await build({
    entryPoints: [fileURLToPath(new URL('../../src/client.ts', import.meta.url))],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    write: false,
    minify: true,
  });
  return result.outputFiles[0]!.text;
}

/** Read your writes: answers once every page's stream has the change. */
async function confirmWrite(request: IncomingMessage, response: ServerResponse, write: (row: RowData) => Promise<string>, tide: Tide): Promise<void> {
  try {
    let body = '';
    for await (const chunk of request) body += String(chunk);
    const txid = await write(JSON.parse(body) as RowData);
    await tide.waitFor(txid, { timeout: 5000 });
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ txid, confirmed: true }));
  } catch (error) {
    response.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: String(error) }));
  }
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
<script type="module">
import { liveState } from '/client.js';
const columns = ${scriptJson(columns)};
const tbody = document.querySelector('tbody');
const statusLine = document.getElementById('status');
const order = new Intl.Collator(undefined, { numeric: true });
const shown = new Map(); // key -> { tr, row }
const show = (value) => (value === null || value === undefined ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value));

// Renders the state: rows whose object changed are rewritten (and flash), in key order.
function render(rows, highlight) {
  for (const [key, entry] of shown) if (!rows.has(key)) { entry.tr.remove(); shown.delete(key); }
  for (const key of [...rows.keys()].sort(order.compare)) {
    const row = rows.get(key);
    let entry = shown.get(key);
    if (entry && entry.row === row) continue;
    if (!entry) {
      const tr = document.createElement('tr');
      tr.dataset.key = key;
      for (const column of columns) { const td = document.createElement('td'); td.dataset.column = column; tr.append(td); }
      const next = [...tbody.children].find((other) => order.compare(other.dataset.key, key) > 0);
      tbody.insertBefore(tr, next ?? null);
      entry = { tr, row };
      shown.set(key, entry);
    }
    entry.row = row;
    // textContent, never innerHTML: row values are data, not markup.
    columns.forEach((column, index) => (entry.tr.children[index].textContent = show(row[column])));
    if (highlight) { entry.tr.classList.remove('changed'); void entry.tr.offsetWidth; entry.tr.classList.add('changed'); }
  }
  document.getElementById('count').textContent = rows.size;
}

liveState('/live' + location.search).subscribe({
  next: ({ rows, status }) => {
    render(rows, status === 'live');
    statusLine.dataset.state = status === 'snapshot' ? 'live' : status;
    statusLine.textContent = status === 'snapshot' ? 'live' : status;
  },
  error: (error) => { statusLine.dataset.state = 'error'; statusLine.textContent = 'error: ' + error.message; },
});
</script>
</body>
</html>
`;
}
