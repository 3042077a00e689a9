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
  SchemaChange,
  StartFrom,
  StateOptions,
  StreamEvent,
  StreamPhase,
  StreamStatus,
  TideSettings,
  TideStatus,
  TideWarning,
  ConsumerExpiredWarning,
  ConsumerStalledWarning,
  GroupShare,
  LiveEvent,
  Transaction,
  TransactionsOptions,
  WaitForOptions,
  WatchOptions,
} from './types.js';
export type { ConsumerInfo, GroupInfo, GroupMemberInfo, PruneResult } from './consumers.js';
export type { DeadLetter } from './deadLetters.js';
export type { LogStats, WatchedTable } from './status.js';
export { carryDelivery, markProcessed } from './delivery.js';
export { decodeChange, encodeChange } from './codec.js';
export { acknowledge } from '../operators/acknowledge.js';
export { batchChanges } from '../operators/batchChanges.js';
export { coalesce } from '../operators/coalesce.js';
export { debounceByKey } from '../operators/debounceByKey.js';
export { filterRows } from '../operators/filterRows.js';
export { groupByRow } from '../operators/groupByRow.js';
export { ofOperation } from '../operators/ofOperation.js';
export { processChanges } from '../operators/processChanges.js';
export type { ProcessChangesOptions } from '../operators/processChanges.js';
export { rowKey } from '../operators/rowKey.js';
export { stateKey, toState } from '../operators/toState.js';
export { whereChanged } from '../operators/whereChanged.js';
export { withPrevious } from '../operators/withPrevious.js';
