export { connect, Tide } from './connect.js';
export type { ConnectOptions } from './options.js';
export { PgTideError, RowValidationError } from './errors.js';
export type { PgTideErrorCode } from './errors.js';
export type {
  Blocker,
  Change,
  ChangesOptions,
  Logger,
  Operation,
  RowData,
  StartFrom,
  StreamEvent,
  WatchOptions,
} from './types.js';
