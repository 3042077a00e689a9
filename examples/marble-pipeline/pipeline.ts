// Quota mails: when an active user's quota changes, mail them, once per burst of edits,
// in batches to the mail API, and acknowledge only what the API accepted.
import { asyncScheduler, concat, concatMap, from, ignoreElements, of, type Observable, type ObservableInput, type SchedulerLike } from 'rxjs';
// In an application: import { acknowledge, ... } from 'pgtide/operators'; import type { Change, Tide } from 'pgtide';
import { acknowledge, batchChanges, debounceByKey, filterRows, ofOperation, whereChanged } from '../../operators/index.js';
import type { Tide } from '../../src/connect.js';
import type { Change } from '../../src/types.js';

/** The columns of `mail_users` this pipeline reads. */
export interface QuotaUser {
  readonly id: number;
  readonly email: string;
  readonly active: boolean;
  readonly quota_bytes: number;
}

/** One mail for the mail API. */
export interface QuotaMail {
  readonly to: string;
  readonly quotaBytes: number;
}

export interface QuotaMailerOptions {
  /** Durable consumer name. Default `quota-mailer`. */
  readonly consumer?: string;
  /** A user's quota must stay unchanged this long (ms) before they are mailed: one mail per burst of edits. */
  readonly quietMs: number;
  /** Mails per call of `send`. */
  readonly batchSize: number;
  /** Longest wait (ms) for a batch to fill. */
  readonly batchMs: number;
  /** Sends a batch; the batch is acknowledged when this completes, and retried after a restart if it fails. */
  readonly send: (mails: readonly QuotaMail[]) => ObservableInput<unknown>;
  /** Timers of the debounce and the batches: a `TestScheduler` in marble tests. */
  readonly scheduler?: SchedulerLike;
}

/** Anything with `changes$`: a real `Tide`, or `createTestTide()` from `pgtide/testing`. */
export type ChangeSource = Pick<Tide, 'changes$'>;

/**
 * ```
 * mail_users changes ─ ofOperation('update') ─ whereChanged('quota_bytes') ─ filterRows(active)
 *   ─ debounceByKey(quietMs) ─ batchChanges({ size, time }) ─ concatMap(send) ─ acknowledge()
 * ```
 *
 * Every change the filters drop counts as processed at once; a change a later edit of
 * the same user supersedes is processed when that later one is; the rest are processed
 * when `send` completes for their batch. So the consumer's saved position never passes a
 * mail that was not accepted, and a crash re-sends at most the batches in flight.
 *
 * @returns the batches sent, each after `send` completed for it.
 */
export function quotaMails(tide: ChangeSource, options: QuotaMailerOptions): Observable<Change<QuotaUser>[]> {
  const scheduler = options.scheduler ?? asyncScheduler;
  return tide
    .changes$<QuotaUser>('mail_users', {
      consumer: options.consumer ?? 'quota-mailer',
      columns: ['email', 'active', 'quota_bytes'],
    })
    .pipe(
      ofOperation('update'),
      whereChanged('quota_bytes'),
      filterRows((user) => user.active),
      debounceByKey(options.quietMs, scheduler),
      batchChanges({ size: options.batchSize, time: options.batchMs }, scheduler),
      // One batch at a time: the batch is passed on when the mail API completes.
      concatMap((batch) => concat(from(options.send(batch.map(toMail))).pipe(ignoreElements()), of(batch))),
      acknowledge(),
    );
}

export function toMail(change: Change<QuotaUser>): QuotaMail {
  return { to: change.new!.email, quotaBytes: change.new!.quota_bytes };
}
