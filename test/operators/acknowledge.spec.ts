import { map, mergeMap, of, timer } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { batchChanges } from '../../operators/batchChanges.js';
import type { Change } from '../../src/types.js';
import { consumer, del, ins, upd, type User, newScheduler } from './fixtures.js';

// Delivered in this order, ids 1..5; the consumer's position is the id it moved to.
const a = ins('1', { id: 1, name: 'Ann' });
const b = ins('2', { id: 2, name: 'Bo' });
const c = upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
const d = del('4', { id: 2, name: 'Bo' });
const e = ins('5', { id: 3, name: 'Cy' });
const values = { a, b, c, d, e };

describe('acknowledge', () => {
  let testScheduler: TestScheduler;

  it('acknowledges each change as it passes, moving the position in delivery order', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-|', values);
      const e1subs = '  ^------!';
      const expected = '-a-b-c-|';

      expectObservable(e1.pipe(mailer.delivered(), acknowledge())).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 1 },
      { id: '2', frame: 3 },
      { id: '3', frame: 5 },
    ]);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('never moves the position past a change still in progress when mergeMap finishes out of order', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // How long handling each change takes: c (id 3) is slow.
    const work: Record<string, number> = { '1': 1, '2': 1, '3': 5, '4': 1, '5': 4 };
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -abcde|       ', values);
      const expected = '--ab-d--c(e|) ';

      const handled = e1.pipe(
        mailer.delivered(),
        mergeMap((change) => timer(work[change.id]!).pipe(map(() => change))),
        acknowledge(),
      );
      expectObservable(handled).toBe(expected, values);
    });
    // 1 and 2 at once; 4 is done at 5 but waits for 3; 3 at 8 moves it straight to 4; then 5.
    expect(mailer.moves).toEqual([
      { id: '1', frame: 2 },
      { id: '2', frame: 3 },
      { id: '4', frame: 8 },
      { id: '5', frame: 9 },
    ]);
  });

  it('acknowledges every change of a batch from batchChanges', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -ab-c----d-|   ', values);
      const e1subs = '  ^----------!   ';
      const expected = '--x----y---(z|)';

      const batches = e1.pipe(mailer.delivered(), batchChanges({ size: 2, time: 3 }), acknowledge());
      expectObservable(batches).toBe(expected, { x: [a, b], y: [c], z: [d] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 2 },
      { id: '2', frame: 2 },
      { id: '3', frame: 7 },
      { id: '4', frame: 11 },
    ]);
  });

  it('holds a batch finished early until the batches delivered before it are done', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -ab-c-|     ', values);
      const expected = '------y-(x|)';

      // [a, b] (at 2) takes 6 frames, [c] (at 5) takes 1: [c] reaches acknowledge() first.
      const batches = e1.pipe(
        mailer.delivered(),
        batchChanges({ size: 2, time: 1 }),
        mergeMap((batch) => timer(batch.length === 2 ? 6 : 1).pipe(map(() => batch))),
        acknowledge(),
      );
      expectObservable(batches).toBe(expected, { x: [a, b], y: [c] });
    });
    // Nothing moves at 6; at 8, a moves it to 1, then b closes the gap up to 3.
    expect(mailer.moves).toEqual([
      { id: '1', frame: 8 },
      { id: '3', frame: 8 },
    ]);
  });

  it('passes an error through and does not acknowledge the value that failed', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-d-|', values);
      const e1subs = '  ^----!    ';
      const expected = '-a-b-#    ';

      const handled = e1.pipe(
        mailer.delivered(),
        map((change) => {
          if (change === c) throw new Error('handler failed');
          return change;
        }),
        acknowledge(),
      );
      expectObservable(handled).toBe(expected, values, new Error('handler failed'));
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 1 },
      { id: '2', frame: 3 },
    ]);
    // c was delivered and never acknowledged: the consumer gets it again when it resumes.
    expect(mailer.ledger.inFlight).toBe(1);
  });

  it('acknowledges nothing further after an unsubscribe in the middle of batches', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -ab-cde---|', values);
      const e1subs = '  ^------!   ';
      const unsub = '   -------!   ';
      const expected = '-----x--   ';

      // At 7, [c, d] is being handled (until 8) and [e] is still being collected.
      const batches = e1.pipe(
        mailer.delivered(),
        batchChanges({ size: 2 }),
        mergeMap((batch) => timer(3).pipe(map(() => batch))),
        acknowledge(),
      );
      expectObservable(batches, unsub).toBe(expected, { x: [a, b] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 5 },
      { id: '2', frame: 5 },
    ]);
    expect(mailer.ledger.inFlight).toBe(3);
  });

  it('passes changes without a delivery through untouched', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // Fresh objects that no consumer stream delivered, around one that was.
    const x = ins('10', { id: 10, name: 'Xi' });
    const y = del('11', { id: 10, name: 'Xi' });
    const delivered = mailer.deliver(ins('1', { id: 1, name: 'Ann' }));
    const seen: Change<User>[] = [];
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -x-a-y-|', { x, a: delivered, y });
      const expected = '-x-a-y-|';

      const acknowledged = e1.pipe(acknowledge());
      acknowledged.subscribe((change) => seen.push(change));
      expectObservable(acknowledged).toBe(expected, { x, a: delivered, y });
    });
    expect(seen).toHaveLength(3);
    expect(seen[0]).toBe(x);
    expect(seen[1]).toBe(delivered);
    expect(seen[2]).toBe(y);
    expect(mailer.moves).toEqual([{ id: '1', frame: 3 }]);
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(mailer.delivered(), acknowledge())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([]);
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(mailer.delivered(), acknowledge())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([]);
  });

  it('should pass through an error', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a--#', values);
      const e1subs = '  ^---!';
      const expected = '-a--#';

      expectObservable(e1.pipe(mailer.delivered(), acknowledge())).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([{ id: '1', frame: 1 }]);
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-|', values);
      const e1subs = '  ^---!   ';
      const unsub = '   ----!   ';
      const expected = '-a-b-   ';

      expectObservable(e1.pipe(mailer.delivered(), acknowledge()), unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 1 },
      { id: '2', frame: 3 },
    ]);
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-b-c-|', values);
      const e1subs = '  ^---!   ';
      const unsub = '   ----!   ';
      const expected = '-a-b-   ';

      const result = e1.pipe(
        mailer.delivered(),
        mergeMap((change) => of(change)),
        acknowledge(),
        mergeMap((change) => of(change)),
      );
      expectObservable(result, unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 1 },
      { id: '2', frame: 3 },
    ]);
  });
});
