import { delay, mergeMap, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { whereChanged } from '../../operators/whereChanged.js';
import type { Change } from '../../src/types.js';
import { consumer, del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

const values = {
  i: ins('1', { id: 1, name: 'Ann', email: 'a@x' }),
  n: upd('2', { id: 1, name: 'Bo', email: 'a@x' }, { id: 1, name: 'Ann', email: 'a@x' }),
  e: upd('3', { id: 1, name: 'Bo', email: 'b@x' }, { id: 1, name: 'Bo', email: 'a@x' }),
  b: upd('4', { id: 1, name: 'Cy', email: 'c@x' }, { id: 1, name: 'Bo', email: 'b@x' }),
  a: upd('5', { id: 1, name: 'Cy', email: 'c@x', active: true }, { id: 1, name: 'Cy', email: 'c@x' }),
  d: del('6', { id: 1, name: 'Cy', email: 'c@x' }),
};

describe('whereChanged', () => {
  let testScheduler: TestScheduler;

  it('keeps inserts, deletes and the updates that changed the column', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--n--e--b--a--d--|', values);
      const e1subs = '  ^-------------------!';
      const expected = '--i-----e--b-----d--|';

      expectObservable(e1.pipe(whereChanged('email'))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('keeps updates that changed any of several columns', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--n--e--b--a--d--|', values);
      const e1subs = '  ^-------------------!';
      const expected = '--i-----e--b--a--d--|';

      expectObservable(e1.pipe(whereChanged('email', 'active'))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('keeps a truncate, although its changed list is empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const t = trunc('7');
      const e1 = hot('  --i--n--t--e--|', { ...values, t });
      const e1subs = '  ^-------------!';
      const expected = '--i-----t--e--|';

      expectObservable(e1.pipe(whereChanged('email'))).toBe(expected, { ...values, t });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('marks each dropped update processed, without moving the position past a change in progress', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--n--e--|     ', values);
      const e1subs = '  ^----------!     ';
      const expected = '------i-----(e|) ';

      // Each kept change takes 4 frames to handle; n (name only) is dropped at 5.
      const handled = e1.pipe(mailer.delivered(), whereChanged('email'), delay(4), acknowledge());
      expectObservable(handled).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    // n (2) waits for i (1): acknowledging i at 6 moves the position past both.
    expect(mailer.moves).toEqual([
      { id: '2', frame: 6 },
      { id: '3', frame: 12 },
    ]);
  });

  it('marks a dropped update processed at once when nothing is in progress', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  --n--b--|', values);
      const expected = '-----b--|';

      expectObservable(e1.pipe(mailer.delivered(), whereChanged('email'))).toBe(expected, values);
    });
    // n is done at 2; b (kept, never acknowledged) stays in flight.
    expect(mailer.moves).toEqual([{ id: '2', frame: 2 }]);
    expect(mailer.ledger.inFlight).toBe(1);
  });

  it('judges by the changed list, not by comparing values', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      // Claims `email` changed although old and new agree: it is kept.
      const listed = upd('7', { id: 1, name: 'Bo', email: 'a@x' }, { id: 1, name: 'Ann', email: 'a@x' }, ['email']);
      const e1 = hot('  --l--n--|', { l: listed, n: values.n });
      const expected = '--l-----|';

      expectObservable(e1.pipe(whereChanged('email'))).toBe(expected, { l: listed });
    });
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(whereChanged('email'))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(whereChanged('email'))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass through an error', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--n--#', values);
      const e1subs = '  ^-------!';
      const expected = '--i-----#';

      expectObservable(e1.pipe(whereChanged('email'))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--e--b--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--i--e---   ';

      expectObservable(e1.pipe(whereChanged('email')), unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--e--b--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--i--e---   ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        whereChanged('email'),
        mergeMap((change) => of(change)),
      );
      expectObservable(result, unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('throws INVALID_OPTIONS without a column or with an empty name', () => {
    const none = [] as unknown as ['email'];
    expect(() => whereChanged(...none)).toThrow(expect.objectContaining({ name: 'PgTideError', code: 'INVALID_OPTIONS' }));
    expect(() => whereChanged('email', '')).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTIONS', details: { columns: ['email', ''], invalid: '' } }),
    );
  });
});
