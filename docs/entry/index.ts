/**
 * PostgreSQL data changes as RxJS observables: {@link connect} to a database, then
 * follow tables with `tide.changes$()`, `tide.events$()` and `tide.state$()`. The
 * operators of `pgtide/operators` are exported here too.
 *
 * @example
 * ```ts
 * import { connect } from 'pgtide';
 *
 * const tide = await connect({ connectionString: process.env.DATABASE_URL });
 * tide.changes$('mail_users', { columns: ['quota_bytes'] })
 *   .subscribe((change) => console.log(change.op, change.key, change.changed));
 * ```
 *
 * @module pgtide
 */
export * from '../../src/index.js';
