import { delay, mergeMap, of, type Observable } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { ofOperation, type ChangeOf } from '../../operators/ofOperation.js';
import { PgTideError } from '../../src/errors.js';
import type { Change, Operation } from '../../src/types.js';
import { consumer, del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

const values = {
  i: ins('1', { id: 1, name: 'Ann' }),
  u: upd('2', { id: 1, name: 'Bo' }, { id: 1, name: 'Ann' }),
  d: del('3', { id: 1, name: 'Bo' }),
  v: upd('4', { id: 2, name: 'Cy' }, { id: 2, name: 'Al' }),
  t: trunc('5'),
};

describe('ofOperation', () => {
  let testScheduler: TestScheduler;

  it('keeps only changes of the given operation', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--d--v--|', values);
      const e1subs = '  ^-------------!';
      const expected = '-----u-----v--|';

      expectObservable(e1.pipe(ofOperation<User, 'update'>('update'))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('marks each dropped change processed, without moving the position past a change in progress', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--d--v--|     ', values);
      const e1subs = '  ^-------------!     ';
      const expected = '---------u-----(v|) ';

      // Each kept update takes 4 frames to handle; the dropped i and d need no work.
      const handled = e1.pipe(mailer.delivered(), ofOperation('update'), delay(4), acknowledge());
      expectObservable(handled).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    // i (1) at once; d (3), dropped at 8, waits for u (2), acknowledged at 9; then v (4).
    expect(mailer.moves).toEqual([
      { id: '1', frame: 2 },
      { id: '3', frame: 9 },
      { id: '4', frame: 15 },
    ]);
  });

  it('does not mark the changes it keeps', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  --u--v--|', values);
      const expected = '--u--v--|';

      expectObservable(e1.pipe(mailer.delivered(), ofOperation('update'))).toBe(expected, values);
    });
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(2);
  });

  it('keeps changes of any of several operations', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--d--v--|', values);
      const e1subs = '  ^-------------!';
      const expected = '--i-----d-----|';

      expectObservable(e1.pipe(ofOperation('insert', 'delete'))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('keeps truncates when asked for them, and only then', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--d--t--v--|', values);
      const e1subs = '  ^----------------!';
      const removals = '--------d--t-----|';
      const deletes = ' --------d--------|';
      const truncs = '  -----------t-----|';

      expectObservable(e1.pipe(ofOperation('delete', 'truncate'))).toBe(removals, values);
      expectObservable(e1.pipe(ofOperation('delete'))).toBe(deletes, values);
      expectObservable(e1.pipe(ofOperation<User, 'truncate'>('truncate'))).toBe(truncs, values);
      expectSubscriptions(e1.subscriptions).toBe([e1subs, e1subs, e1subs]);
    });
  });

  it('marks a truncate it drops processed, like any dropped change', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  --i--t--|', values);
      const expected = '--i-----|';

      expectObservable(e1.pipe(mailer.delivered(), ofOperation('insert'), acknowledge())).toBe(expected, values);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 2 },
      { id: '5', frame: 5 },
    ]);
  });

  it('narrows op and keeps the row type', () => {
    const source: Observable<Change<User>> = of(values.i, values.u);
    const inserts = source.pipe(ofOperation('insert'));
    expectTypeOf(inserts).toEqualTypeOf<Observable<ChangeOf<User, 'insert'>>>();
    expectTypeOf<ChangeOf<User, 'insert' | 'delete'>['op']>().toEqualTypeOf<'insert' | 'delete'>();
    expectTypeOf(source.pipe(ofOperation('truncate'))).toEqualTypeOf<Observable<ChangeOf<User, 'truncate'>>>();

    const seen: Operation[] = [];
    inserts.subscribe((change) => {
      const op: 'insert' = change.op;
      seen.push(op);
    });
    expect(seen).toEqual(['insert']);
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(ofOperation('insert'))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(ofOperation('insert'))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass through an error', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--#', values);
      const e1subs = '  ^-------!';
      const expected = '--i-----#';

      expectObservable(e1.pipe(ofOperation('insert'))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--i--|', values);
      const e1subs = '  ^-----!     ';
      const unsub = '   ------!     ';
      const expected = '--i----     ';

      expectObservable(e1.pipe(ofOperation('insert')), unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --i--u--i--|', values);
      const e1subs = '  ^-----!     ';
      const unsub = '   ------!     ';
      const expected = '--i----     ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        ofOperation('insert'),
        mergeMap((change) => of(change)),
      );
      expectObservable(result, unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('throws INVALID_OPTIONS for no operation or an unknown one', () => {
    const none = [] as unknown as ['insert'];
    expect(() => ofOperation(...none)).toThrow(PgTideError);
    expect(() => ofOperation(...none)).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    const unknown = ['insert', 'upsert'] as unknown as ['insert'];
    expect(() => ofOperation(...unknown)).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTIONS', details: { ops: ['insert', 'upsert'], invalid: 'upsert' } }),
    );
    expect(() => ofOperation(...unknown)).toThrow(
      `ofOperation(): unknown operation "upsert"; use 'insert', 'update', 'delete' or 'truncate'`,
    );
    expect(() => ofOperation('truncate')).not.toThrow();
  });
});
