import { Observable, filter, map, scan } from 'rxjs';
import { changeFromData, decodeValues } from './codec.js';
import { PgTideError, type PgTideErrorCode } from './errors.js';
import type { Change, RowData } from './types.js';

// The browser side of pgtide/http: fetch, Server-Sent Events read by hand (so headers
// such as Last-Event-ID and Authorization can be sent, in browsers and in Node 20+), and
// rxjs. Nothing from Node.

/** Where a live view stands. */
export type LiveStatus = 'connecting' | 'snapshot' | 'live' | 'reconnecting';

/** What {@link liveState} emits. */
export interface LiveStateValue<Row = RowData> {
  /** The rows the server lets this client see, by row key (the server's `stateKey`). */
  readonly rows: ReadonlyMap<string, Row>;
  /**
   * `connecting` before the first snapshot; `snapshot` when `rows` was just replaced by
   * a fresh one (the first, or after the server could not resume); `live` while changes
   * apply; `reconnecting` while the connection is down (`rows` as last known).
   */
  readonly status: LiveStatus;
}

/** Options of {@link liveState} and {@link liveChanges}. */
export interface LiveClientOptions {
  /** The fetch to use. Default `globalThis.fetch`. */
  readonly fetch?: typeof fetch;
  /** Extra request headers (an `Authorization`, say). */
  readonly headers?: Readonly<Record<string, string>>;
  /** Milliseconds before reconnect attempt `attempt` (1, 2, ...). Default 250 ms doubling to 10 s, with jitter. */
  readonly backoff?: (attempt: number) => number;
}

/** One event of a live connection, as {@link liveEvents} reports it. */
export type LiveClientEvent<Row = RowData> =
  | {
      /** A fresh set of rows: the first, or one that replaces what the client held. */
      readonly kind: 'snapshot';
      /** `initial`, `reset` (the server could not resume after Last-Event-ID) or `slow` (the client fell behind). */
      readonly reason: string;
      /** Each row with its key. */
      readonly rows: ReadonlyArray<readonly [string, Row]>;
    }
  | {
      /** A change to apply. */
      readonly kind: 'change';
      /** The row's key (as in a snapshot's rows). */
      readonly key: string;
      /** The change as this client may see it (an insert or delete where the row entered or left its filter). */
      readonly change: Change<Row>;
    }
  | {
      /** The connection's state changed. */
      readonly kind: 'status';
      /** `connecting` (first attempt), `live` (connected, changes follow), `reconnecting` (down, trying again). */
      readonly status: 'connecting' | 'live' | 'reconnecting';
    };

/** Codes an `error` event ends the stream with instead of a reconnect: the same request would fail again. */
const finalCodes: ReadonlySet<string> = new Set(['FORBIDDEN', 'UNKNOWN_TABLE', 'UNKNOWN_COLUMN', 'INVALID_OPTIONS', 'INVALID_TABLE_NAME', 'PERMISSION_DENIED']);

const defaultBackoff = (attempt: number) => Math.min(10_000, 250 * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2);

/**
 * A table's live rows from a `pgtide/http` `liveHandler` URL: a snapshot, then a new
 * map after each change; it reconnects with backoff when the connection drops and
 * resumes after the last change it applied (or takes the fresh snapshot the server
 * sends when it cannot resume). Errors only for what reconnecting cannot fix (the
 * server refused the request: `FORBIDDEN`, an unknown table).
 *
 * @example
 * ```ts
 * import { liveState } from 'pgtide/client';
 * liveState('/live/mail_users').subscribe(({ rows, status }) => render([...rows.values()], status));
 * ```
 */
export function liveState<Row = RowData>(url: string, options: LiveClientOptions = {}): Observable<LiveStateValue<Row>> {
  return liveEvents<Row>(url, options).pipe(
    scan<LiveClientEvent<Row>, { value: LiveStateValue<Row>; emit: boolean }>(
      ({ value }, event) => {
        switch (event.kind) {
          case 'snapshot':
            return { value: { rows: new Map(event.rows), status: 'snapshot' }, emit: true };
          case 'status':
            // The first event of every connection: the view starts out connecting.
            if (event.status === 'connecting') return { value, emit: true };
            if (event.status === 'live' && value.status === 'connecting') return { value, emit: false };
            return { value: { rows: value.rows, status: event.status }, emit: value.status !== event.status };
          case 'change': {
            const rows = new Map(value.rows);
            const { change } = event;
            if (change.op === 'truncate') rows.clear();
            else if (change.op === 'delete') rows.delete(event.key);
            else rows.set(event.key, change.new as Row);
            return { value: { rows, status: 'live' }, emit: true };
          }
        }
      },
      { value: { rows: new Map<string, Row>(), status: 'connecting' }, emit: true },
    ),
    filter(({ emit }) => emit),
    map(({ value }) => value),
  );
}

/** The changes a `liveHandler` URL sends (after its snapshot), reconnecting and resuming as {@link liveState} does. */
export function liveChanges<Row = RowData>(url: string, options: LiveClientOptions = {}): Observable<Change<Row>> {
  return liveEvents<Row>(url, options).pipe(
    filter((event): event is Extract<LiveClientEvent<Row>, { kind: 'change' }> => event.kind === 'change'),
    map((event) => event.change),
  );
}

/**
 * The raw events of a `liveHandler` URL: snapshots, changes, and the connection's
 * status; reconnects with backoff, sending `Last-Event-ID`.
 */
export function liveEvents<Row = RowData>(url: string, options: LiveClientOptions = {}): Observable<LiveClientEvent<Row>> {
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  const backoff = options.backoff ?? defaultBackoff;
  return new Observable<LiveClientEvent<Row>>((subscriber) => {
    let lastId: string | undefined;
    let stopped = false;
    let controller: AbortController | undefined;
    let wake: (() => void) | undefined;
    subscriber.next({ kind: 'status', status: 'connecting' });
    void (async () => {
      for (let attempt = 0; !stopped; ) {
        controller = new AbortController();
        let received = false;
        try {
          const headers: Record<string, string> = { accept: 'text/event-stream', ...options.headers };
          if (lastId) headers['last-event-id'] = lastId;
          const response = await fetchImpl(url, { headers, signal: controller.signal });
          if (!response.body) throw new Error(`no response body (status ${response.status})`);
          for await (const event of serverSentEvents(response.body)) {
            if (stopped) return;
            received = true;
            if (event.id !== undefined) lastId = event.id || undefined;
            if (event.comment === 'resumed') subscriber.next({ kind: 'status', status: 'live' });
            if (event.type === 'snapshot') {
              const body = JSON.parse(event.data) as { reason: string; rows: Array<[string, unknown]> };
              subscriber.next({ kind: 'snapshot', reason: body.reason, rows: body.rows.map(([key, row]) => [key, decodeValues(row) as Row] as const) });
              subscriber.next({ kind: 'status', status: 'live' });
            } else if (event.type === 'change') {
              const body = JSON.parse(event.data) as { key: string; change: unknown };
              subscriber.next({ kind: 'change', key: body.key, change: changeFromData<Row>(body.change) });
            } else if (event.type === 'error') {
              const body = JSON.parse(event.data) as { code: string; message: string };
              if (finalCodes.has(body.code)) {
                stopped = true;
                subscriber.error(new PgTideError(body.code as PgTideErrorCode, `${url}: ${body.message}`, { url, code: body.code }));
                return;
              }
            }
          }
        } catch (error) {
          if (stopped) return;
          if (error instanceof PgTideError) {
            subscriber.error(error);
            return;
          }
        }
        if (stopped) return;
        subscriber.next({ kind: 'status', status: 'reconnecting' });
        attempt = received ? 1 : attempt + 1;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, backoff(attempt));
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    })();
    return () => {
      stopped = true;
      controller?.abort();
      wake?.();
    };
  });
}

interface ServerSentEvent {
  readonly type: string;
  readonly data: string;
  /** The event's id field: undefined without one, '' for an empty one (which resets Last-Event-ID). */
  readonly id?: string;
  /** A comment-only block's text (`: resumed`). */
  readonly comment?: string;
}

/** The events of a `text/event-stream` body (the WHATWG format: fields, blank-line separated). */
async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  // A large event (a snapshot) arrives in many chunks: they are kept apart, each searched
  // once for the blank line that ends the event (with the last 3 characters before it,
  // where a separator may start), and joined once.
  let parts: string[] = [];
  let carry = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let rest = value;
      for (;;) {
        const probe = carry + rest;
        const separator = /\r?\n\r?\n/.exec(probe);
        if (!separator) {
          parts.push(rest);
          carry = probe.slice(-3);
          break;
        }
        const pending = parts.join('');
        const end = separator.index - carry.length;
        const block = end >= 0 ? pending + rest.slice(0, end) : pending.slice(0, pending.length + end);
        rest = rest.slice(end + separator[0].length);
        parts = [];
        carry = '';
        const event = parseEvent(block);
        if (event) yield event;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** One event block's fields; undefined for a block with neither data nor a comment. */
function parseEvent(block: string): ServerSentEvent | undefined {
  let type = 'message';
  const data: string[] = [];
  let id: string | undefined;
  let comment: string | undefined;
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(':')) {
      comment = line.slice(1).trim();
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const fieldValue = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') type = fieldValue;
    else if (field === 'data') data.push(fieldValue);
    else if (field === 'id') id = fieldValue;
  }
  if (data.length > 0) return { type, data: data.join('\n'), ...(id !== undefined ? { id } : {}) };
  if (comment !== undefined) return { type: 'comment', data: '', comment };
  return undefined;
}
