import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { stateKey, toState } from '../../operators/toState.js';
import type { Change } from '../../src/types.js';
import { del, ins, newScheduler, trunc, upd, type User } from './fixtures.js';

const ann = { id: 1, name: 'Ann' };
const al = { id: 1, name: 'Al' };
const bo = { id: 2, name: 'Bo' };
const a = ins('1', ann);
const b = upd('2', al, ann);
const c = ins('3', bo);
const d = del('4', al);
const values = { a, b, c, d };
const rows = (...entries: User[]) => new Map(entries.map((row) => [String(row.id), row]));

describe('toState', () => {
  let testScheduler: TestScheduler;

  it('applies inserts and updates as set and deletes as delete, emitting the rows after each change', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--d--|', values);
      const e1subs = '  ^-------------!';
      const expected = '--A--B--C--D--|';
      expectObservable(e1.pipe(toState<User>())).toBe(expected, {
        A: rows(ann),
        B: rows(al),
        C: rows(al, bo),
        D: rows(bo),
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('starts from initial rows and emits fresh maps, leaving earlier emissions untouched', () => {
    const emitted: ReadonlyMap<string, User>[] = [];
    const initial = rows(bo);
    testScheduler = newScheduler();
    testScheduler.run(({ cold }) => {
      cold('-a-d|', values).pipe(toState<User>(stateKey, initial)).subscribe((state) => emitted.push(state));
    });
    expect(emitted).toEqual([rows(bo, ann), rows(bo)]);
    expect(initial).toEqual(rows(bo));
    expect(emitted[0]).not.toBe(emitted[1]);
  });

  it('applies a batch at once and emits once per batch', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable }) => {
      const batches = cold<readonly Change<User>[]>('-x-y|', { x: [a, b, c], y: [d] });
      expectObservable(batches.pipe(toState<User>())).toBe('-X-Y|', { X: rows(al, bo), Y: rows(bo) });
    });
  });

  it('clears every row on a truncate, initial rows included, and builds up again after it', () => {
    const cy = { id: 3, name: 'Cy' };
    const t = trunc('5');
    const e = ins('6', cy);
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--c--t--e--t--|', { ...values, t, e });
      const e1subs = '  ^----------------!';
      const expected = '--A--C--T--E--T--|';

      expectObservable(e1.pipe(toState<User>(stateKey, rows(bo)))).toBe(expected, {
        A: rows(bo, ann),
        C: rows(bo, ann),
        T: rows(),
        E: rows(cy),
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('applies a truncate in its place within a batch, without calling keyOf for it', () => {
    const keyed: Change<User>[] = [];
    const byName = toState<User>((change) => {
      keyed.push(change);
      return (change.new ?? change.old)!.name;
    });
    const t = trunc('5');
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable }) => {
      const batches = cold<readonly Change<User>[]>('-x-y|', { x: [a, t, c], y: [t] });
      expectObservable(batches.pipe(byName)).toBe('-X-Y|', { X: new Map([['Bo', bo]]), Y: new Map() });
    });
    expect(keyed).toEqual([a, c]);
  });

  it('keys rows with keyOf, and composite keys by default as their values joined', () => {
    const composite = ins('9', ann, { key: { org: 'acme', id: 1 } });
    expect(stateKey(composite)).toBe('acme\u00001');
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable }) => {
      const source = cold('-a-c|', values);
      const byName = toState<User>((change) => (change.new ?? change.old)!.name);
      expectObservable(source.pipe(byName)).toBe('-A-C|', {
        A: new Map([['Ann', ann]]),
        C: new Map([
          ['Ann', ann],
          ['Bo', bo],
        ]),
      });
    });
  });

  it('errors when keyOf throws, and passes errors through', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable }) => {
      const failingKey = toState<User>(() => {
        throw new Error('no key');
      });
      expectObservable(cold('-a|', values).pipe(failingKey)).toBe('-#', undefined, new Error('no key'));
      expectObservable(cold('-a-#', values).pipe(toState<User>())).toBe('-A-#', { A: rows(ann) });
    });
  });

  it('should handle empty and never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const empty = cold<Change<User>>('|');
      expectObservable(empty.pipe(toState<User>())).toBe('|');
      expectSubscriptions(empty.subscriptions).toBe('(^!)');
      const never = cold<Change<User>>('-');
      expectObservable(never.pipe(toState<User>())).toBe('-');
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--|', values);
      const unsub = '   ------!     ';
      const e1subs = '  ^-----!     ';
      expectObservable(e1.pipe(toState<User>()), unsub).toBe('--A--B-', { A: rows(ann), B: rows(al) });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
