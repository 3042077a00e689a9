import { delay, mergeMap, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { filterRows } from '../../operators/filterRows.js';
import type { Change } from '../../src/types.js';
import { consumer, del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

const values = {
  a: ins('1', { id: 1, name: 'Ann', active: true }),
  b: ins('2', { id: 2, name: 'Bo', active: false }),
  c: upd('3', { id: 2, name: 'Bo', active: true }, { id: 2, name: 'Bo', active: false }),
  o: upd('4', { id: 1, name: 'Ann', active: false }, { id: 1, name: 'Ann', active: true }),
  d: del('5', { id: 2, name: 'Bo', active: true }),
  e: del('6', { id: 1, name: 'Ann', active: false }),
};
const isActive = (row: User): boolean => row.active === true;

describe('filterRows', () => {
  let testScheduler: TestScheduler;

  it('tests the new row of inserts and updates and the old row of deletes', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--o--d--e--|', values);
      const e1subs = '  ^-------------------!';
      const expected = '--a-----c-----d-----|';

      expectObservable(e1.pipe(filterRows(isActive))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('marks each dropped change processed, without moving the position past a change in progress', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--o--|', values);
      const e1subs = '  ^-------------!';
      const expected = '------a-----c-|';

      // Each kept change takes 4 frames to handle; b and o are dropped.
      const handled = e1.pipe(mailer.delivered(), filterRows(isActive), delay(4), acknowledge());
      expectObservable(handled).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    // b (2) and o (4) each wait for the kept change before them (a at 6, c at 12).
    expect(mailer.moves).toEqual([
      { id: '2', frame: 6 },
      { id: '4', frame: 12 },
    ]);
  });

  it('marks a change without a row processed, but not one whose predicate throws', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const { new: _dropped, ...bare } = ins('1', { id: 1, name: 'Ann' });
      const noRow: Change<User> = bare;
      const e1 = hot('  --n--b--c--|', { n: noRow, b: values.b, c: values.c });
      const e1subs = '  ^-------!   ';
      const expected = '--------#   ';

      const result = e1.pipe(
        mailer.delivered(),
        filterRows((row) => {
          if (row.active === true) throw new Error('predicate failed');
          return false;
        }),
      );
      expectObservable(result).toBe(expected, undefined, new Error('predicate failed'));
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    // n (1, no row) and b (2, predicate false) are done; c (3) made the predicate throw.
    expect(mailer.moves).toEqual([
      { id: '1', frame: 2 },
      { id: '2', frame: 5 },
    ]);
    expect(mailer.ledger.inFlight).toBe(1);
  });

  it('passes a truncate through without calling the predicate, and does not mark it processed', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    const t = trunc('7');
    const calls: User[] = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--t--|', { ...values, t });
      const e1subs = '  ^----------!';
      const expected = '--a-----t--|';

      const result = e1.pipe(
        mailer.delivered(),
        filterRows((row) => {
          calls.push(row);
          return isActive(row);
        }),
      );
      expectObservable(result).toBe(expected, { ...values, t });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(calls).toEqual([values.a.new, values.b.new]);
    // b (2) is dropped but waits for a (1); t (7) is kept, so nobody marks it.
    expect(mailer.moves).toEqual([]);
    // a and t are unprocessed (b is processed, behind a).
    expect(mailer.ledger.inFlight).toBe(2);
  });

  it('passes the whole change as the second argument', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  --a--b--c--o--d--e--|', values);
      const expected = '-----------o-----e--|';

      expectObservable(e1.pipe(filterRows<User>((row, change) => row.id === 1 && change.op !== 'insert'))).toBe(
        expected,
        values,
      );
    });
  });

  it('drops a change without the row to test, without calling the predicate', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const { new: _dropped, ...bare } = values.a;
      const noRow: Change<User> = bare;
      const calls: User[] = [];
      const e1 = hot('  --n--a--|', { n: noRow, a: values.a });
      const expected = '-----a--|';

      const result = e1.pipe(
        filterRows((row) => {
          calls.push(row);
          return true;
        }),
      );
      expectObservable(result).toBe(expected, values);
      testScheduler.flush();
      expect(calls).toEqual([values.a.new]);
    });
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(filterRows(isActive))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(filterRows(isActive))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass through an error', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--#', values);
      const e1subs = '  ^-------!';
      const expected = '--a-----#';

      expectObservable(e1.pipe(filterRows(isActive))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should send an error thrown by the predicate downstream and unsubscribe', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--|', values);
      const e1subs = '  ^----!      ';
      const expected = '--a--#      ';

      const result = e1.pipe(
        filterRows((row) => {
          if (row.id === 2) throw new Error('boom');
          return true;
        }),
      );
      expectObservable(result).toBe(expected, values, new Error('boom'));
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--c--d--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--a--c---   ';

      expectObservable(e1.pipe(filterRows(isActive)), unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--c--d--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--a--c---   ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        filterRows(isActive),
        mergeMap((change) => of(change)),
      );
      expectObservable(result, unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
