import type { SchedulerAction, SchedulerLike, Subscription } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { expect } from 'vitest';
import type { Change } from '../../src/types.js';

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
