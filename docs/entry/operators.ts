/**
 * Pipeable RxJS operators typed on `Change<Row>`: filtering, debouncing, batching,
 * folding into state, and `acknowledge()` for durable consumers.
 *
 * @example
 * ```ts
 * import { acknowledge, batchChanges, ofOperation } from 'pgtide/operators';
 *
 * tide.changes$('mail_users', { consumer: 'quota-sync', columns: ['quota_bytes'] })
 *   .pipe(ofOperation('update'), batchChanges({ size: 100, time: 50 }), acknowledge())
 *   .subscribe();
 * ```
 *
 * @module pgtide/operators
 */
export * from '../../operators/index.js';
