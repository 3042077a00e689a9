import { createServer, request as httpRequest, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { firstValueFrom, filter, take, toArray, type Subscription } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { liveEvents, liveState, type LiveClientEvent, type LiveStateValue } from '../../src/client.js';
import { liveHandler, type LiveHandler } from '../../src/http.js';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

// pgtide/http served by a real node:http server on a real PostgreSQL, read by pgtide/client in Node.

interface Note {
  id: number;
  owner: string;
  body: string;
}

let db: TestDatabase;
let tide: Tide;
let server: Server;
let base: string;
const sockets = new Set<Socket>();
const handlers: Record<string, LiveHandler> = {};

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL)');
  await db.pool.query(`INSERT INTO notes VALUES (1, 'ann', 'first'), (2, 'bob', 'second')`);
  tide = await db.tide({ pruneInterval: 0 });
  handlers.all = liveHandler<Note>(tide, 'notes', { heartbeat: 50 });
  handlers.mine = liveHandler<Note>(tide, 'notes', {
    authorize: (request) => {
      const user = request.headers['x-user'];
      if (typeof user !== 'string') throw new Error('who are you?');
      return { rowFilter: (row) => row.owner === user };
    },
  });
  handlers.small = liveHandler<Note>(tide, 'notes', { maxBuffered: 16 * 1024 });
  handlers.missing = liveHandler(tide, 'no_such_table');
  server = createServer((request, response) => {
    const name = new URL(request.url!, 'http://x').pathname.slice(1);
    const handler = handlers[name];
    if (handler) handler(request, response);
    else response.writeHead(404).end();
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});

afterAll(async () => {
  for (const handler of Object.values(handlers)) handler.close();
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => server?.close(resolve));
  await tide?.close();
  await db?.drop();
});

/** What a raw request to `url` receives until it holds `until`. */
function readUntil(url: string, until: string, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve) => {
    httpRequest(url, { headers }, (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes(until)) {
          response.destroy();
          resolve(text);
        }
      });
    }).end();
  });
}

const rowsOf = (value: LiveStateValue<Note>) => [...value.rows.values()].sort((a, b) => a.id - b.id);
const fast = { backoff: () => 20 };

describe('pgtide/http liveHandler with pgtide/client', () => {
  it('sends a snapshot, then deltas; all connections share one live$ stream', async () => {
    const seen: Array<LiveStateValue<Note>> = [];
    const subscriptions: Subscription[] = [];
    for (let client = 0; client < 3; client += 1) {
      subscriptions.push(liveState<Note>(`${base}/all`, fast).subscribe((value) => client === 0 && seen.push(value)));
    }
    await eventually(() => seen.some((value) => value.status === 'live'), 'live');
    expect(seen[0]!.status).toBe('connecting');
    expect(seen.find((value) => value.status === 'snapshot')!.rows.size).toBe(2);
    await db.pool.query(`INSERT INTO notes VALUES (3, 'ann', 'third')`);
    await db.pool.query(`UPDATE notes SET body = 'edited' WHERE id = 1`);
    await db.pool.query(`DELETE FROM notes WHERE id = 2`);
    await eventually(() => seen.at(-1)!.rows.size === 2 && seen.at(-1)!.rows.get('1')?.body === 'edited', 'deltas applied');
    expect(rowsOf(seen.at(-1)!)).toEqual([
      { id: 1, owner: 'ann', body: 'edited' },
      { id: 3, owner: 'ann', body: 'third' },
    ]);
    const status = await firstValueFrom(tide.status$);
    expect(status.streams.filter((stream) => stream.table === 'public.notes')).toHaveLength(1);
    expect(handlers.all!.connections).toBe(3);
    for (const subscription of subscriptions) subscription.unsubscribe();
    await eventually(() => handlers.all!.connections === 0, 'connections closed');
  });

  it('shows each client only the rows authorize lets it see: rows leaving arrive as deletes, rows entering as inserts', async () => {
    const ann: Array<LiveStateValue<Note>> = [];
    const bob: Array<LiveStateValue<Note>> = [];
    const a = liveState<Note>(`${base}/mine`, { ...fast, headers: { 'x-user': 'ann' } }).subscribe((value) => ann.push(value));
    const b = liveEvents<Note>(`${base}/mine`, { ...fast, headers: { 'x-user': 'bob' } });
    const bobEvents: Array<LiveClientEvent<Note>> = [];
    const bSub = b.subscribe((event) => bobEvents.push(event));
    const bState = liveState<Note>(`${base}/mine`, { ...fast, headers: { 'x-user': 'bob' } }).subscribe((value) => bob.push(value));
    await eventually(() => ann.at(-1)?.status === 'live' && bob.at(-1)?.status === 'live', 'both live');
    expect(rowsOf(ann.at(-1)!).map((row) => row.id)).toEqual([1, 3]);
    expect(bob.at(-1)!.rows.size).toBe(0);
    await db.pool.query(`UPDATE notes SET owner = 'bob' WHERE id = 3`);
    await db.pool.query(`INSERT INTO notes VALUES (4, 'bob', 'fourth'), (5, 'ann', 'fifth')`);
    await eventually(() => bob.at(-1)!.rows.size === 2 && ann.at(-1)!.rows.size === 2, 'moved');
    expect(rowsOf(ann.at(-1)!).map((row) => row.id)).toEqual([1, 5]);
    expect(rowsOf(bob.at(-1)!).map((row) => row.id)).toEqual([3, 4]);
    const bobChanges = bobEvents.flatMap((event) => (event.kind === 'change' ? [[event.change.op, event.change.new?.id ?? event.change.old?.id]] : []));
    expect(bobChanges).toEqual([
      ['insert', 3],
      ['insert', 4],
    ]);
    a.unsubscribe();
    bSub.unsubscribe();
    bState.unsubscribe();
  });

  it('refuses an unauthorized request with 403 and a FORBIDDEN error event, and an unknown table with UNKNOWN_TABLE', async () => {
    await expect(firstValueFrom(liveState(`${base}/mine`, fast))).resolves.toMatchObject({ status: 'connecting' });
    await expect(firstValueFrom(liveState(`${base}/mine`, fast).pipe(filter((value) => value.status !== 'connecting')))).rejects.toMatchObject({
      code: 'FORBIDDEN',
      message: expect.stringContaining('who are you?'),
    });
    const status = await new Promise<number>((resolve) => httpRequest(`${base}/mine`, (response) => resolve(response.statusCode!)).end());
    expect(status).toBe(403);
    await expect(firstValueFrom(liveState(`${base}/missing`, fast).pipe(filter((value) => value.status !== 'connecting')))).rejects.toMatchObject({
      code: 'UNKNOWN_TABLE',
    });
  });

  it('resumes after Last-Event-ID when the connection drops, and sends a fresh snapshot marked reset for an unknown one', async () => {
    const events: Array<LiveClientEvent<Note>> = [];
    const subscription = liveEvents<Note>(`${base}/all`, fast).subscribe((event) => events.push(event));
    await eventually(() => events.some((event) => event.kind === 'snapshot'), 'snapshot');
    await db.pool.query(`UPDATE notes SET body = 'before drop' WHERE id = 1`);
    await eventually(() => events.some((event) => event.kind === 'change'), 'a change');
    // The network drops: every socket of the server goes.
    for (const socket of sockets) socket.destroy();
    await db.pool.query(`UPDATE notes SET body = 'while away' WHERE id = 1`);
    await eventually(() => events.filter((event) => event.kind === 'change').length === 2, 'the change made while away arrives');
    expect(events.filter((event) => event.kind === 'snapshot')).toHaveLength(1);
    expect(events.map((event) => (event.kind === 'status' ? event.status : event.kind))).toEqual(['connecting', 'snapshot', 'live', 'change', 'reconnecting', 'live', 'change']);
    subscription.unsubscribe();

    const reset = await readUntil(`${base}/all`, '\n\n', { 'last-event-id': '987654321' });
    expect(reset).toMatch(/^id: \d+\nevent: snapshot\ndata: \{"reason":"reset","rows":\[/);
  });

  it('sends heartbeats on idle connections', async () => {
    const text = await readUntil(`${base}/all`, ': heartbeat');
    expect(text).toContain(': heartbeat\n\n');
  });

  it('keeps what waits for a client that does not read bounded, then sends it a fresh snapshot marked slow', async () => {
    let serverSocket: Socket | undefined;
    const grab = (socket: Socket) => (serverSocket = socket);
    server.once('connection', grab);
    const received: Buffer[] = [];
    const response = await new Promise<import('node:http').IncomingMessage>((resolve) => httpRequest(`${base}/small`, resolve).end());
    response.on('data', (chunk: Buffer) => received.push(chunk));
    await eventually(() => Buffer.concat(received).toString().includes('"reason":"initial"'), 'the first snapshot');
    response.pause();
    // Big changes, while the client reads nothing.
    const big = 'x'.repeat(4000);
    let maxWaiting = 0;
    for (let round = 0; round < 40; round += 1) {
      await db.pool.query(`UPDATE notes SET body = $1 || $2::text`, [big, round]);
      await new Promise((resolve) => setTimeout(resolve, 5));
      maxWaiting = Math.max(maxWaiting, serverSocket!.writableLength);
    }
    // The socket's kernel buffers take some, node's queue the rest: never more than maxBuffered plus one event.
    expect(maxWaiting).toBeLessThan(16 * 1024 + 3 * 4200);
    response.resume();
    await eventually(() => Buffer.concat(received).toString().includes('"reason":"slow"'), 'a snapshot marked slow after the client caught up');
    const text = Buffer.concat(received).toString();
    const afterSlow = text.slice(text.indexOf('"reason":"slow"'));
    expect(afterSlow).toContain(`${big}39`);
    response.destroy();
  });
});
