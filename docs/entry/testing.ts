/**
 * Unit-test kit without a database: the change builders `insert`, `update`, `del` and `truncate`,
 * and `createTestTide()`, a fake Tide for marble tests that records acknowledgements.
 *
 * @example
 * ```ts
 * import { createTestTide, insert } from 'pgtide/testing';
 *
 * const testTide = createTestTide(testScheduler);
 * testTide.source('mail_users', hot('-a-|', { a: insert('mail_users', { id: 1 }) }));
 * ```
 *
 * @module pgtide/testing
 */
export * from '../../src/testing/index.js';
