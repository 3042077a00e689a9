import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Subscription } from 'rxjs';
import type { ZodType } from 'zod';
import { stateKey } from '../operators/toState.js';
import { encodeChange, encodeValues } from './codec.js';
import type { Tide } from './connect.js';
import { PgTideError } from './errors.js';
import type { Change, RowData } from './types.js';

/** What one request may see (see {@link LiveHandlerOptions.authorize}). */
export interface LiveAccess<Row> {
  /**
   * Only rows for which this returns true are sent. A row that stops passing arrives
   * as a delete, one that starts passing as an insert. It sees rows as the client does
   * (the key plus `columns`, when given).
   */
  readonly rowFilter?: (row: Row) => boolean;
}

/** Options of {@link liveHandler}. */
export interface LiveHandlerOptions<Row> {
  /** Rows carry the key plus these columns; updates of other columns are not sent. */
  readonly columns?: readonly string[];
  /** Validates and types the rows (see `state$`). */
  readonly schema?: ZodType<Row>;
  /**
   * Decides per request what it may see; throw (or reject) to refuse the request: it
   * gets status 403 and an `error` event with code `FORBIDDEN` and the error's message.
   */
  readonly authorize?: (request: IncomingMessage) => LiveAccess<Row> | Promise<LiveAccess<Row>>;
  /** Milliseconds between heartbeat comments on idle connections. Default 15 000. */
  readonly heartbeat?: number;
  /**
   * Bytes a connection may have waiting to be sent. A client that falls further behind
   * gets nothing more until it has read what was sent, then a fresh snapshot (marked
   * `slow`) instead of the changes it missed. Default 1 MiB.
   */
  readonly maxBuffered?: number;
  /** Recent changes kept so a reconnecting client resumes after its `Last-Event-ID`. Default 10 000. */
  readonly resumeWindow?: number;
  /** Milliseconds the shared table stream keeps running after its last client left (for reconnects). Default 30 000. */
  readonly idleTimeout?: number;
}

/** A request handler for `node:http`, Express or Fastify (`reply.hijack()`, then `handler(request.raw, reply.raw)`). */
export interface LiveHandler {
  (request: IncomingMessage, response: ServerResponse): void;
  /** Open connections now. */
  readonly connections: number;
  /** Ends every connection and the shared stream. */
  close(): void;
}

/** Why a client got a snapshot: its first, an unusable `Last-Event-ID`, or it fell behind. */
export type SnapshotReason = 'initial' | 'reset' | 'slow';

interface Recent {
  readonly id: string;
  readonly key: string;
  readonly change: Change<unknown>;
  /** The change event's text, once one connection wrote it unchanged: the others send the same bytes. */
  event?: string;
}

/**
 * Serves a table's live state over Server-Sent Events. Each connection gets a
 * `snapshot` event (`{ reason, rows: [[key, row], ...] }`), then a `change` event per
 * change (`{ key, change }`, the change as {@link encodeChange} writes it), each with its
 * change id as the event id; a client reconnecting with `Last-Event-ID` (the header,
 * or `?lastEventId=`) gets the changes after it, or a fresh snapshot marked `reset` when
 * that change is no longer among the last `resumeWindow`. Heartbeats keep idle
 * connections open. Errors are an `error` event (`{ code, message }`) after which the
 * stream ends. All connections share one `tide.live$` stream of the table; `pgtide/client`
 * reads this protocol.
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http';
 * import { liveHandler } from 'pgtide/http';
 *
 * const live = liveHandler(tide, 'mail_users', { columns: ['username', 'quota_bytes'] });
 * createServer((req, res) => (req.url?.startsWith('/live') ? live(req, res) : res.end())).listen(8080);
 * ```
 */
export function liveHandler<Row extends object = RowData>(tide: Tide, table: string, options: LiveHandlerOptions<Row> = {}): LiveHandler {
  const heartbeat = options.heartbeat ?? 15_000;
  const maxBuffered = options.maxBuffered ?? 1024 * 1024;
  const resumeWindow = options.resumeWindow ?? 10_000;
  const idleTimeout = options.idleTimeout ?? 30_000;
  for (const [name, value] of [['heartbeat', heartbeat], ['maxBuffered', maxBuffered], ['resumeWindow', resumeWindow], ['idleTimeout', idleTimeout]] as const) {
    if (!Number.isInteger(value) || value < 0) {
      throw new PgTideError('INVALID_OPTIONS', `liveHandler: ${name} must be a non-negative integer`, { option: name, value });
    }
  }
  const connections = new Set<LiveConnection<Row>>();
  let shared: SharedTable<Row> | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  const beat = setInterval(() => {
    for (const connection of connections) connection.heartbeat();
  }, Math.max(1, heartbeat));
  beat.unref();

  const sharedTable = (): SharedTable<Row> => {
    clearTimeout(idleTimer);
    idleTimer = undefined;
    if (shared && !shared.failed) return shared;
    const created = new SharedTable<Row>(resumeWindow, {
      change: (recent) => {
        for (const connection of connections) connection.change(recent);
      },
      fail: (error) => {
        if (shared === created) shared = undefined;
        for (const connection of [...connections]) connection.fail(error);
      },
    });
    created.start(tide, table, options);
    shared = created;
    return created;
  };

  const handler = ((request: IncomingMessage, response: ServerResponse) => {
    void (async () => {
      let access: LiveAccess<Row>;
      try {
        access = (await options.authorize?.(request)) ?? {};
      } catch (error) {
        writeError(response, 403, 'FORBIDDEN', error instanceof Error ? error.message : String(error));
        return;
      }
      if (response.destroyed) return;
      const table = sharedTable();
      try {
        await table.ready;
      } catch (error) {
        writeError(response, 500, errorCode(error), error instanceof Error ? error.message : String(error));
        return;
      }
      if (response.destroyed) return;
      response.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      const connection = new LiveConnection<Row>(response, table, access.rowFilter, maxBuffered);
      connections.add(connection);
      request.on('close', () => {
        connections.delete(connection);
        connection.close();
        if (connections.size === 0 && shared) {
          const idle = shared;
          idleTimer = setTimeout(() => {
            if (connections.size === 0 && shared === idle) {
              idle.stop();
              shared = undefined;
            }
          }, idleTimeout);
          idleTimer.unref();
        }
      });
      connection.begin(lastEventId(request));
    })().catch((error: unknown) => {
      writeError(response, 500, errorCode(error), error instanceof Error ? error.message : String(error));
    });
  }) as LiveHandler;
  Object.defineProperty(handler, 'connections', { get: () => connections.size });
  handler.close = () => {
    clearInterval(beat);
    clearTimeout(idleTimer);
    for (const connection of [...connections]) connection.end();
    connections.clear();
    shared?.stop();
    shared = undefined;
  };
  return handler;
}

/** The table's rows and recent changes, kept by one `live$` stream for every connection. */
class SharedTable<Row> {
  readonly rows = new Map<string, Row>();
  /** The last change applied, or undefined before the first. */
  lastId: string | undefined;
  readonly recent: Recent[] = [];
  failed = false;
  readonly ready: Promise<void>;
  private subscription: Subscription | undefined;
  private settle!: { resolve: () => void; reject: (error: unknown) => void };

  constructor(
    private readonly resumeWindow: number,
    private readonly listeners: { change(recent: Recent): void; fail(error: unknown): void },
  ) {
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.ready.catch(() => undefined);
  }

  start(tide: Tide, table: string, options: LiveHandlerOptions<Row>): void {
    this.subscription = tide
      .live$<Row>(table, {
        ...(options.columns ? { columns: options.columns } : {}),
        ...(options.schema ? { schema: options.schema } : {}),
      })
      .subscribe({
        next: (event) => {
          if (event.kind === 'snapshot') {
            for (const [key, row] of event.rows) this.rows.set(key, row);
            this.settle.resolve();
            return;
          }
          const { change } = event;
          const key = change.op === 'truncate' ? '' : stateKey(change);
          if (change.op === 'truncate') this.rows.clear();
          else if (change.op === 'delete') this.rows.delete(key);
          else this.rows.set(key, change.new as Row);
          const recent: Recent = { id: change.id, key, change: change as Change<unknown> };
          this.recent.push(recent);
          if (this.recent.length > this.resumeWindow) this.recent.splice(0, this.recent.length - this.resumeWindow);
          this.lastId = change.id;
          this.listeners.change(recent);
        },
        error: (error: unknown) => {
          this.failed = true;
          this.settle.reject(error);
          this.listeners.fail(error);
        },
      });
  }

  /** The changes after `id`, or undefined when `id` is not among the recent ones. */
  after(id: string): readonly Recent[] | undefined {
    if (id === this.lastId) return [];
    const index = this.recent.findIndex((recent) => recent.id === id);
    return index < 0 ? undefined : this.recent.slice(index + 1);
  }

  stop(): void {
    this.subscription?.unsubscribe();
  }
}

/** One client: what it may see, and the bytes waiting for it. */
class LiveConnection<Row> {
  /** Stopped writing until the client read what waits (see `maxBuffered`). */
  private behind = false;
  private ended = false;
  private wroteSince = false;

  constructor(
    private readonly response: ServerResponse,
    private readonly table: SharedTable<Row>,
    private readonly rowFilter: ((row: Row) => boolean) | undefined,
    private readonly maxBuffered: number,
  ) {}

  begin(resumeAfter: string | undefined): void {
    const missed = resumeAfter === undefined ? undefined : this.table.after(resumeAfter);
    if (missed === undefined) {
      this.snapshot(resumeAfter === undefined ? 'initial' : 'reset');
      return;
    }
    // Resumed: the client holds the state as of its Last-Event-ID.
    this.write(': resumed\n\n');
    for (const recent of missed) this.change(recent);
  }

  change(recent: Recent): void {
    if (this.behind || this.ended) return;
    const visible = this.visibleChange(recent.change as Change<Row>);
    if (!visible) return;
    if (visible !== recent.change) {
      this.write(changeEvent(recent, visible as Change<unknown>));
      return;
    }
    recent.event ??= changeEvent(recent, recent.change);
    this.write(recent.event);
  }

  heartbeat(): void {
    if (!this.wroteSince && !this.behind && !this.ended) this.write(': heartbeat\n\n');
    this.wroteSince = false;
  }

  fail(error: unknown): void {
    if (this.ended) return;
    this.write(`event: error\ndata: ${JSON.stringify({ code: errorCode(error), message: error instanceof Error ? error.message : String(error) })}\n\n`);
    this.end();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.response.end();
  }

  close(): void {
    this.ended = true;
  }

  private snapshot(reason: SnapshotReason): void {
    const rows: Array<[string, unknown]> = [];
    for (const [key, row] of this.table.rows) if (!this.rowFilter || this.rowFilter(row)) rows.push([key, encodeValues(row)]);
    // An empty id resets the client's Last-Event-ID when nothing was applied yet.
    this.write(`id: ${this.table.lastId ?? ''}\nevent: snapshot\ndata: ${JSON.stringify({ reason, rows })}\n\n`);
  }

  /** The change as this client sees it: as is, as an insert or delete when the row enters or leaves its filter, or nothing. */
  private visibleChange(change: Change<Row>): Change<Row> | undefined {
    const filter = this.rowFilter;
    if (!filter || change.op === 'truncate') return change;
    const before = change.old !== undefined && filter(change.old);
    const after = change.new !== undefined && filter(change.new);
    if (change.op === 'insert') return after ? change : undefined;
    if (change.op === 'delete') return before ? change : undefined;
    if (before && after) return change;
    if (after) {
      const { old: _old, ...rest } = change;
      return { ...rest, op: 'insert', changed: Object.keys(change.new!) };
    }
    if (before) {
      const { new: _new, ...rest } = change;
      return { ...rest, op: 'delete', changed: Object.keys(change.old!) };
    }
    return undefined;
  }

  private write(text: string): void {
    if (this.ended) return;
    this.wroteSince = true;
    this.response.write(text);
    if (this.response.writableLength > this.maxBuffered && !this.behind) {
      this.behind = true;
      this.response.once('drain', () => {
        this.behind = false;
        this.snapshot('slow');
      });
    }
  }
}

function changeEvent(recent: Recent, change: Change<unknown>): string {
  return `id: ${recent.id}\nevent: change\ndata: {"key":${JSON.stringify(recent.key)},"change":${encodeChange(change)}}\n\n`;
}

function lastEventId(request: IncomingMessage): string | undefined {
  const header = request.headers['last-event-id'];
  const fromHeader = Array.isArray(header) ? header[0] : header;
  if (fromHeader) return fromHeader;
  const query = new URL(request.url ?? '/', 'http://localhost').searchParams.get('lastEventId');
  return query || undefined;
}

function errorCode(error: unknown): string {
  return error instanceof PgTideError ? error.code : 'INTERNAL';
}

/** A request that ends before any change: its status, one `error` event, the end. */
function writeError(response: ServerResponse, status: number, code: string, message: string): void {
  if (response.destroyed || response.writableEnded) return;
  if (!response.headersSent) response.writeHead(status, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  response.end(`event: error\ndata: ${JSON.stringify({ code, message })}\n\n`);
}
