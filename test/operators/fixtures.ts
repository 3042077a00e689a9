import { tap, type MonoTypeOperatorFunction, type SchedulerAction, type SchedulerLike, type Subscription } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { expect } from 'vitest';
import { Ledger, recordDelivery } from '../../src/delivery.js';
import type { Change } from '../../src/types.js';
import { NOTHING_VISIBLE, type Position } from '../../src/log.js';

/** The row type of the fixture table `public.users` (a type alias, so it is a `Record`). */
export type User = {
  readonly id: number;
  readonly name: string;
  readonly email?: string;
  readonly active?: boolean;
};

/** The `committedAt` of every fixture change. */
export const committedAt = new Date('2024-01-01T00:00:00.000Z');

interface Extra {
  /** Defaults to `tx<id>`. */
  readonly txid?: string;
  readonly schema?: string;
  readonly table?: string;
  /** Defaults to `{ id: row.id }`. */
  readonly key?: Record<string, unknown>;
}

function base(id: string, row: User, extra: Extra): Omit<Change<User>, 'op' | 'new' | 'old' | 'changed'> {
  return {
    id,
    txid: extra.txid ?? `tx${id}`,
    schema: extra.schema ?? 'public',
    table: extra.table ?? 'users',
    key: extra.key ?? { id: row.id },
    committedAt,
  };
}

/** An insert of `row` into `public.users`; `changed` lists every column of `row`. */
export function ins(id: string, row: User, extra: Extra = {}): Change<User> {
  return { ...base(id, row, extra), op: 'insert', new: row, changed: Object.keys(row) };
}

/**
 * An update of `public.users` from `old` to `row`; `changed` defaults to the columns
 * whose values differ.
 */
export function upd(id: string, row: User, old: User, changed?: readonly string[], extra: Extra = {}): Change<User> {
  const before: Readonly<Record<string, unknown>> = old;
  const after: Readonly<Record<string, unknown>> = row;
  const differing = Object.keys({ ...before, ...after }).filter((column) => after[column] !== before[column]);
  return { ...base(id, row, extra), op: 'update', new: row, old, changed: changed ?? differing };
}

/** A delete of `row` from `public.users`; `changed` lists every column of `row`. */
export function del(id: string, row: User, extra: Extra = {}): Change<User> {
  return { ...base(id, row, extra), op: 'delete', old: row, changed: Object.keys(row) };
}

/**
 * A TRUNCATE of `public.users` (or `extra.schema`/`extra.table`): empty `key`, no
 * `changed` column, no `new`, no `old`.
 */
export function trunc(id: string, extra: Omit<Extra, 'key'> = {}): Change<User> {
  return {
    id,
    txid: extra.txid ?? `tx${id}`,
    schema: extra.schema ?? 'public',
    table: extra.table ?? 'users',
    op: 'truncate',
    key: {},
    changed: [],
    committedAt,
  };
}

/**
 * A scheduler that delegates to `inner` and counts how many scheduled actions actually
 * ran, to prove that an operator cancels its timers.
 */
export class CountingScheduler implements SchedulerLike {
  runs = 0;

  constructor(private readonly inner: SchedulerLike) {}

  now(): number {
    return this.inner.now();
  }

  schedule<T>(work: (this: SchedulerAction<T>, state?: T) => void, delay?: number, state?: T): Subscription {
    const counter = this;
    return this.inner.schedule<T>(
      function (this: SchedulerAction<T>, value?: T) {
        counter.runs += 1;
        work.call(this, value);
      },
      delay,
      state,
    );
  }
}

/** A fresh marble scheduler whose assertions go through vitest's deep equality. */
export function newScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/** One move of a consumer's processed position: the change it moved to, and when. */
export interface Move {
  readonly id: string;
  readonly frame: number;
}

/** A real delivery {@link Ledger} of one durable consumer stream, recording every move. */
export interface DeadLetterRecord {
  readonly id: string;
  readonly error: string;
  readonly attempts: number;
}

export interface Consumer {
  readonly ledger: Ledger;
  /** Each move of the processed position, in order, with `scheduler.now()` at the time. */
  readonly moves: Move[];
  /** Dead letters kept (only with `keepsDeadLetters`). */
  readonly deadLetters: DeadLetterRecord[];
  /**
   * Records each change that passes as delivered by the consumer stream, in the order
   * they pass, as `changes$(table, { consumer })` does when it emits them.
   */
  delivered<C extends Change<unknown>>(): MonoTypeOperatorFunction<C>;
  /** Records one change as delivered now; returns it. */
  deliver<C extends Change<unknown>>(change: C): C;
}

const noop = (): void => undefined;
const quiet = { debug: noop, info: noop, warn: noop, error: noop };

/** A consumer starting before every change; its positions carry the change id as `afterId`. */
export function consumer(scheduler: SchedulerLike, keepsDeadLetters = false): Consumer {
  const moves: Move[] = [];
  const deadLetters: DeadLetterRecord[] = [];
  const at = (id: bigint): Position => ({ era: 1, base: NOTHING_VISIBLE, upto: NOTHING_VISIBLE, afterId: id });
  const ledger = new Ledger({
    start: at(0n),
    save: () => Promise.resolve(),
    flushDelay: 0,
    logger: quiet,
    onProcessed: (position) => moves.push({ id: position.afterId!.toString(), frame: scheduler.now() }),
    ...(keepsDeadLetters
      ? {
          deadLetter: (id: string, error: string, attempts: number) => {
            deadLetters.push({ id, error, attempts });
            return Promise.resolve();
          },
        }
      : {}),
  });
  const deliver = <C extends Change<unknown>>(change: C): C => {
    recordDelivery(change, ledger.deliver(at(BigInt(change.id)), change.id));
    return change;
  };
  return { ledger, moves, deadLetters, deliver, delivered: <C extends Change<unknown>>() => tap<C>(deliver) };
}
