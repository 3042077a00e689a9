import { mergeMap, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { debounceByKey } from '../../operators/debounceByKey.js';
import type { Change } from '../../src/types.js';
import { consumer, CountingScheduler, del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

// Row 1: a, c, e; row 2: b, d.
const values = {
  a: ins('1', { id: 1, name: 'Ann' }),
  b: ins('2', { id: 2, name: 'Bo' }),
  c: upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' }),
  d: upd('4', { id: 2, name: 'Bea' }, { id: 2, name: 'Bo' }),
  e: del('5', { id: 1, name: 'Al' }),
};

describe('debounceByKey', () => {
  let testScheduler: TestScheduler;

  it('emits a row\'s last change once the row has been quiet for ms', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-c-e-------|', values);
      const e1subs = '  ^------------!';
      const expected = '--------e----|';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('marks a superseded change processed only when the newer change that carries it is acknowledged', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-c-e-------|', values);
      const e1subs = '  ^------------!';
      const expected = '--------e----|';

      expectObservable(e1.pipe(mailer.delivered(), debounceByKey(3), acknowledge())).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    // a (1) is superseded by c at 3, c (3) by e at 5; acknowledging e (5) at 8 covers all three.
    expect(mailer.moves).toEqual([{ id: '5', frame: 8 }]);
  });

  it('does not move the position past another row\'s pending change', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // x: row 2, delivered first; y then z: row 1.
    const x = ins('1', { id: 2, name: 'Bo' });
    const y = ins('2', { id: 1, name: 'Ann' });
    const z = upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -xy-z-------|', { x, y, z });
      const expected = '-----x--z---|';

      expectObservable(e1.pipe(mailer.delivered(), debounceByKey(4), acknowledge())).toBe(expected, { x, z });
    });
    // x (1) is acknowledged at 5; y (2), superseded by z at 4, is done only with z (3) at 8.
    expect(mailer.moves).toEqual([
      { id: '1', frame: 5 },
      { id: '3', frame: 8 },
    ]);
  });

  it('does not mark pending changes processed when the source errors', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a-c-#', values);
      const expected = '-----#';

      expectObservable(e1.pipe(mailer.delivered(), debounceByKey(3), acknowledge())).toBe(expected, values);
    });
    // c was pending (carrying a) when the error came: neither is done, both come again.
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(2);
  });

  it('does not mark pending changes processed on unsubscribe', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-cb-------|', values);
      const e1subs = '  ^----!       ';
      const unsub = '   -----!       ';
      const expected = '------       ';

      expectObservable(e1.pipe(mailer.delivered(), debounceByKey(3), acknowledge()), unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    // c (carrying a) and b were pending: nothing is done.
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(3);
  });

  it('emits a change after ms when nothing follows it', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a------c-----|', values);
      const expected = '----a------c--|';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected, values);
    });
  });

  it('does not delay one row because of another', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      // Row 2 (b) settles at 2+4 = 6 although row 1 keeps changing until 6.
      const e1 = hot('  -ab-c-e---------|', values);
      const expected = '------b---e-----|';

      expectObservable(e1.pipe(debounceByKey(4))).toBe(expected, values);
    });
  });

  it('restarts only the timer of the row that changed', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -ab-d-c---------|', values);
      const expected = '-----a--d-c-----|';

      expectObservable(e1.pipe(debounceByKey(4))).toBe(expected, values);
    });
  });

  it('flushes pending changes on complete in the order their timers would fire', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      // Row 1 first seen first, but its latest change (c) came after row 2's (b).
      const e1 = hot('  -abc-|    ', values);
      const e1subs = '  ^----!    ';
      const expected = '-----(bc|)';

      expectObservable(e1.pipe(debounceByKey(10))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('emits in the same frame when ms is 0', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -a-c-|', values);
      const expected = '-a-c-|';

      expectObservable(e1.pipe(debounceByKey(0))).toBe(expected, values);
    });
  });

  it('drops every pending change of the table on a truncate, and emits the truncate after ms', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const counting = new CountingScheduler(testScheduler);
      const t = trunc('6');
      const e1 = hot('  -ab-t-c-------|', { ...values, t });
      const e1subs = '  ^-------------!';
      const expected = '--------t-c---|';

      expectObservable(e1.pipe(debounceByKey(4, counting))).toBe(expected, { t, c: values.c });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.flush();
      // a's and b's timers were cancelled by t: only t's and c's ran.
      expect(counting.runs).toBe(2);
    });
  });

  it('lets a truncate carry the pending changes it supersedes, all acknowledged with it', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // x: row 1, y: row 2, then the truncate, then z: row 1 again.
    const x = ins('1', { id: 1, name: 'Ann' });
    const y = ins('2', { id: 2, name: 'Bo' });
    const t = trunc('3');
    const z = ins('4', { id: 1, name: 'Al' });
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -xy-t-z-------|', { x, y, t, z });
      const expected = '--------t-z---|';

      expectObservable(e1.pipe(mailer.delivered(), debounceByKey(4), acknowledge())).toBe(expected, { t, z });
    });
    // Acknowledging t at 8 completes t (3), x (1) and y (2): the position moves to 1, then 3.
    expect(mailer.moves).toEqual([
      { id: '1', frame: 8 },
      { id: '3', frame: 8 },
      { id: '4', frame: 10 },
    ]);
  });

  it('does not mark what a pending truncate carries processed when the source errors', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    const t = trunc('6');
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -abt-#', { ...values, t });
      const expected = '-----#';

      expectObservable(e1.pipe(mailer.delivered(), debounceByKey(3), acknowledge())).toBe(expected, values);
    });
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(3);
  });

  it('lets a truncate supersede a pending truncate, and leaves other tables\' changes alone', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const t = trunc('6');
      const s = trunc('7');
      const other = ins('8', { id: 1, name: 'Ann' }, { table: 'admins' });
      const otherSchema = ins('9', { id: 1, name: 'Ann' }, { schema: 'archive' });
      const e1 = hot('  -opt-s-----|', { o: other, p: otherSchema, t, s });
      const expected = '----op--s--|';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected, { o: other, p: otherSchema, s });
    });
  });

  it('flushes a pending truncate on complete before the changes that came after it', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const t = trunc('6');
      const e1 = hot('  -at-c|    ', { ...values, t });
      const expected = '-----(tc|)';

      expectObservable(e1.pipe(debounceByKey(10))).toBe(expected, { t, c: values.c });
    });
  });

  it('treats the same key in another table as another row', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const other = ins('9', { id: 1, name: 'Ann' }, { table: 'admins' });
      const e1 = hot('  -ao------|', { a: values.a, o: other });
      const expected = '----ao---|';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected, { a: values.a, o: other });
    });
  });

  it('treats a numeric key and its string form as the same row', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const asString = upd('9', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' }, ['name'], { key: { id: '1' } });
      const e1 = hot('  -as------|', { a: values.a, s: asString });
      const expected = '-----s---|';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected, { s: asString });
    });
  });

  it('uses the scheduler it is given', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const counting = new CountingScheduler(testScheduler);
      const e1 = hot('  -a-b------|', values);
      const expected = '----a-b---|';

      expectObservable(e1.pipe(debounceByKey(3, counting))).toBe(expected, values);
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

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass an error through at once and drop pending changes', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const counting = new CountingScheduler(testScheduler);
      const e1 = hot('  -a--b-#', values);
      const e1subs = '  ^-----!';
      const expected = '----a-#';

      expectObservable(e1.pipe(debounceByKey(3, counting))).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.flush();
      // b's timer (due at 7) was cancelled by the error.
      expect(counting.runs).toBe(1);
    });
  });

  it('should send an error downstream when a key cannot be encoded', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const bad = ins('9', { id: 9, name: 'Big' }, { key: { id: { n: 1n } } });
      const e1 = hot('  -a-x---|', { a: values.a, x: bad });
      const e1subs = '  ^--!    ';
      const expected = '---#    ';

      expectObservable(e1.pipe(debounceByKey(3))).toBe(expected, values, new TypeError('Do not know how to serialize a BigInt'));
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly, cancelling timers', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const counting = new CountingScheduler(testScheduler);
      const e1 = hot('  -a-b------|', values);
      const e1subs = '  ^----!     ';
      const unsub = '   -----!     ';
      const expected = '----a-     ';

      expectObservable(e1.pipe(debounceByKey(3, counting)), unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
      testScheduler.flush();
      // b's timer (due at 6) was cancelled at 5: only a's ran.
      expect(counting.runs).toBe(1);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b------|', values);
      const e1subs = '  ^-----!    ';
      const unsub = '   ------!    ';
      const expected = '----a--    ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        debounceByKey(3),
        mergeMap((change) => of(change)),
      );
      expectObservable(result, unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('throws INVALID_OPTIONS for a negative, NaN or infinite ms', () => {
    for (const ms of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => debounceByKey(ms)).toThrow(expect.objectContaining({ name: 'PgTideError', code: 'INVALID_OPTIONS', details: { ms } }));
    }
    expect(() => debounceByKey(0)).not.toThrow();
  });
});
