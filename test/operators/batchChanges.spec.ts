import { mergeMap, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { batchChanges } from '../../operators/batchChanges.js';
import type { Change } from '../../src/types.js';
import { CountingScheduler, del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

const a = ins('1', { id: 1, name: 'Ann' });
const b = ins('2', { id: 2, name: 'Bo' });
const c = upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
const d = del('4', { id: 2, name: 'Bo' });
const e = ins('5', { id: 3, name: 'Cy' });
const values = { a, b, c, d, e };

describe('batchChanges', () => {
  let testScheduler: TestScheduler;

  it('emits a batch when it reaches size or time after its first change, whichever comes first', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d------e-----|', values);
      const e1subs = '  ^-------------------!';
      const expected = '-----x-----y------z-|';

      expectObservable(e1.pipe(batchChanges({ size: 3, time: 4 }))).toBe(expected, { x: [a, b, c], y: [d], z: [e] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('batches a truncate like any other change, in its place', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const t = trunc('6');
      const e1 = hot('  -a-t-c-t---e--|', { ...values, t });
      const e1subs = '  ^-------------!';
      const expected = '---x---y------(z|)';

      expectObservable(e1.pipe(batchChanges({ size: 2, time: 4 }))).toBe(expected, { x: [a, t], y: [c, t], z: [e] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('starts the clock at the first change of each batch, not on a fixed grid', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a-b----c--d-----|', values);
      const expected = '----x------y-----|';

      expectObservable(e1.pipe(batchChanges({ time: 3 }))).toBe(expected, { x: [a, b], y: [c, d] });
    });
  });

  it('cancels the timer when size fills a batch, so the next batch gets its full time', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      // [a, b] fills at 2; the timer started at 1 would have fired at 4. c arrives at 3: its batch ends at 3+3 = 6.
      const e1 = hot('  -abc-------|', values);
      const expected = '--x---y----|';

      expectObservable(e1.pipe(batchChanges({ size: 2, time: 3 }))).toBe(expected, { x: [a, b], y: [c] });
    });
  });

  it('with size only, emits full batches and flushes the remainder on complete', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c----------|   ', values);
      const e1subs = '  ^---------------!   ';
      const expected = '---x------------(y|)';

      expectObservable(e1.pipe(batchChanges({ size: 2 }))).toBe(expected, { x: [a, b], y: [c] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('with time only, flushes the unfinished batch on complete', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a-b-|   ', values);
      const expected = '-----(x|)';

      expectObservable(e1.pipe(batchChanges({ time: 10 }))).toBe(expected, { x: [a, b] });
    });
  });

  it('emits each change alone at once with size 1', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a-b-|', values);
      const expected = '-x-y-|';

      expectObservable(e1.pipe(batchChanges({ size: 1, time: 100 }))).toBe(expected, { x: [a], y: [b] });
    });
  });

  it('with time 0, emits what arrived within the same frame', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -(ab)-c-|', values);
      const expected = '-x----y-|';

      expectObservable(e1.pipe(batchChanges({ time: 0 }))).toBe(expected, { x: [a, b], y: [c] });
    });
  });

  it('never emits an empty batch during quiet periods', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a------------------b--|', values);
      const expected = '---x------------------y|';

      expectObservable(e1.pipe(batchChanges({ time: 2 }))).toBe(expected, { x: [a], y: [b] });
    });
  });

  it('uses the scheduler it is given', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const counting = new CountingScheduler(testScheduler);
      const e1 = hot('  -a--------b--|', values);
      const expected = '---x--------y|';

      expectObservable(e1.pipe(batchChanges({ time: 2 }, counting))).toBe(expected, { x: [a], y: [b] });
      testScheduler.flush();
      expect(counting.runs).toBe(2);
    });
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(batchChanges({ size: 2, time: 3 }))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(batchChanges({ size: 2, time: 3 }))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass an error through at once and discard the unfinished batch', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const counting = new CountingScheduler(testScheduler);
      const e1 = hot('  -a--b#', values);
      const e1subs = '  ^----!';
      const expected = '---x-#';

      expectObservable(e1.pipe(batchChanges({ size: 5, time: 2 }, counting))).toBe(expected, { x: [a] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.flush();
      // The timer of the discarded batch [b] (due at 6) never ran.
      expect(counting.runs).toBe(1);
    });
  });

  it('should allow unsubscribing early and explicitly, cancelling the timer', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const counting = new CountingScheduler(testScheduler);
      const e1 = hot('  -ab--c-d--|', values);
      const e1subs = '  ^-----!    ';
      const unsub = '   ------!    ';
      const expected = '--x----    ';

      expectObservable(e1.pipe(batchChanges({ size: 2, time: 3 }, counting)), unsub).toBe(expected, { x: [a, b] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.flush();
      // c's batch timer (started at 5, due at 8) never ran; a's was cancelled when [a, b] filled.
      expect(counting.runs).toBe(0);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -ab--c-d--|', values);
      const e1subs = '  ^-----!    ';
      const unsub = '   ------!    ';
      const expected = '--x----    ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        batchChanges({ size: 2, time: 3 }),
        mergeMap((batch) => of(batch)),
      );
      expectObservable(result, unsub).toBe(expected, { x: [a, b] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('throws INVALID_OPTIONS for a bad size or time, or neither', () => {
    const invalid = (options: { size?: number; time?: number }, path: string): void => {
      expect(() => batchChanges(options)).toThrow(expect.objectContaining({ name: 'PgTideError', code: 'INVALID_OPTIONS' }));
      expect(() => batchChanges(options)).toThrow(expect.objectContaining({ details: expect.objectContaining({ path }) }));
    };
    invalid({ size: 0, time: 10 }, 'size');
    invalid({ size: -3 }, 'size');
    invalid({ size: 1.5 }, 'size');
    invalid({ size: 10, time: -1 }, 'time');
    invalid({ time: Number.NaN }, 'time');
    invalid({ time: Number.POSITIVE_INFINITY }, 'time');
    invalid({}, 'options');
    expect(() => batchChanges({ size: 1, time: 0 })).not.toThrow();
  });
});
