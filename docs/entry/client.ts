/**
 * The browser (and Node 20+) side of `pgtide/http`: `liveState(url)` keeps a table's rows
 * live, reconnecting and resuming; `liveChanges(url)` gives the changes. Needs only rxjs.
 *
 * @example
 * ```ts
 * import { liveState } from 'pgtide/client';
 * liveState('/live/mail_users').subscribe(({ rows, status }) => render(rows, status));
 * ```
 *
 * @module pgtide/client
 */
export * from '../../src/client.js';
