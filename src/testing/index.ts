/**
 * pgtide's kit for unit tests without a database: change builders and a fake `Tide`
 * for marble tests of pipelines, acknowledgement included. Import from `pgtide/testing`.
 *
 * @packageDocumentation
 */
export { del, insert, resetChangeIds, TEST_COMMITTED_AT, truncate, update } from './builders.js';
export type { ChangeOptions } from './builders.js';
export { createTestTide } from './testTide.js';
export type { Acknowledgement, TestDeadLetter, TestTide } from './testTide.js';
