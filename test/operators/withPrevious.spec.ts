import { concat, mergeMap, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, it } from 'vitest';
import { withPrevious } from '../../operators/withPrevious.js';
import type { Change } from '../../src/types.js';
import { del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

// Row 1: a, c, e, f; row 2: b.
const a = ins('1', { id: 1, name: 'Ann' });
const b = ins('2', { id: 2, name: 'Bo' });
const c = upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
const e = del('4', { id: 1, name: 'Al' });
const f = ins('5', { id: 1, name: 'Ann' });
const values = { a, b, c, e, f };

describe('withPrevious', () => {
  let testScheduler: TestScheduler;

  it('pairs each change with the previous change to the same row', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--e--f--|', values);
      const e1subs = '  ^----------------!';
      const expected = '--A--B--C--E--F--|';

      expectObservable(e1.pipe(withPrevious())).toBe(expected, {
        A: { change: a, previous: undefined },
        B: { change: b, previous: undefined },
        C: { change: c, previous: a },
        E: { change: e, previous: c },
        F: { change: f, previous: e },
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('keeps other tables and string forms of keys straight', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const other = ins('6', { id: 1, name: 'Ann' }, { table: 'admins' });
      const asString = upd('7', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' }, ['name'], { key: { id: '1' } });
      const e1 = hot('  --a--o--s--|', { a, o: other, s: asString });
      const expected = '--A--O--S--|';

      expectObservable(e1.pipe(withPrevious())).toBe(expected, {
        A: { change: a, previous: undefined },
        O: { change: other, previous: undefined },
        S: { change: asString, previous: a },
      });
    });
  });

  it('forgets every row of the table on a truncate, which itself has no previous change', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const t = trunc('6');
      const s = trunc('7');
      const b2 = upd('8', { id: 2, name: 'Bea' }, { id: 2, name: 'Bo' });
      const e1 = hot('  --a--b--t--f--b--s--|', { a, b: b2, t, f, s });
      const e1subs = '  ^-------------------!';
      const expected = '--A--B--T--F--X--S--|';

      expectObservable(e1.pipe(withPrevious())).toBe(expected, {
        A: { change: a, previous: undefined },
        B: { change: b2, previous: undefined },
        T: { change: t, previous: undefined },
        F: { change: f, previous: undefined },
        X: { change: b2, previous: undefined },
        S: { change: s, previous: undefined },
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('remembers rows of other tables and schemas across a truncate', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const admin = ins('6', { id: 1, name: 'Ann' }, { table: 'admins' });
      const admin2 = upd('7', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' }, ['name'], { table: 'admins' });
      const archived = ins('8', { id: 1, name: 'Ann' }, { schema: 'archive' });
      const archived2 = del('9', { id: 1, name: 'Ann' }, { schema: 'archive' });
      const t = trunc('10');
      const e1 = hot('  --a--o--r--t--p--q--c--|', { a, o: admin, r: archived, t, p: admin2, q: archived2, c });
      const expected = '--A--O--R--T--P--Q--C--|';

      expectObservable(e1.pipe(withPrevious())).toBe(expected, {
        A: { change: a, previous: undefined },
        O: { change: admin, previous: undefined },
        R: { change: archived, previous: undefined },
        T: { change: t, previous: undefined },
        P: { change: admin2, previous: admin },
        Q: { change: archived2, previous: archived },
        C: { change: c, previous: undefined },
      });
    });
  });

  it('keeps separate history for each subscription', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold('   -a-c-|      ', values);
      const e1subs = ['   ^----!      ', '-----^----!'];
      const expected = '  -A-C--A-C-| ';

      // The second subscription starts from scratch: a again has no previous change.
      const paired = e1.pipe(withPrevious());
      expectObservable(concat(paired, paired)).toBe(expected, {
        A: { change: a, previous: undefined },
        C: { change: c, previous: a },
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(withPrevious())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(withPrevious())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass through an error', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--#', values);
      const e1subs = '  ^----!';
      const expected = '--A--#';

      expectObservable(e1.pipe(withPrevious())).toBe(expected, { A: { change: a, previous: undefined } });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should send an error downstream when a key cannot be encoded', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const bad = ins('9', { id: 9, name: 'Big' }, { key: { id: { n: 9n } } });
      const e1 = hot('  --a--x--b--|', { a, x: bad, b });
      const e1subs = '  ^----!      ';
      const expected = '--A--#      ';

      expectObservable(e1.pipe(withPrevious())).toBe(
        expected,
        { A: { change: a, previous: undefined } },
        new TypeError('Do not know how to serialize a BigInt'),
      );
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--c--e--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--A--C---   ';

      expectObservable(e1.pipe(withPrevious()), unsub).toBe(expected, {
        A: { change: a, previous: undefined },
        C: { change: c, previous: a },
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--c--e--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--A--C---   ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        withPrevious(),
        mergeMap((pair) => of(pair)),
      );
      expectObservable(result, unsub).toBe(expected, {
        A: { change: a, previous: undefined },
        C: { change: c, previous: a },
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
