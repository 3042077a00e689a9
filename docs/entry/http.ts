/**
 * A table's live state over Server-Sent Events: `liveHandler(tide, table, options)` is a
 * request handler for `node:http`, Express or Fastify; `pgtide/client` reads it.
 *
 * @example
 * ```ts
 * import { liveHandler } from 'pgtide/http';
 * app.get('/live/mail_users', liveHandler(tide, 'mail_users', { columns: ['username', 'quota_bytes'] }));
 * ```
 *
 * @module pgtide/http
 */
export * from '../../src/http.js';
