import { filter, ignoreElements, map, mergeMap, NEVER, of, timer } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { groupByRow } from '../../operators/groupByRow.js';
import { rowKey } from '../../operators/rowKey.js';
import type { Change } from '../../src/types.js';
import { del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

// Row 1: a, c, e, f; row 2: b, d.
const a = ins('1', { id: 1, name: 'Ann' });
const b = ins('2', { id: 2, name: 'Bo' });
const c = upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
const d = upd('4', { id: 2, name: 'Bea' }, { id: 2, name: 'Bo' });
const e = del('5', { id: 1, name: 'Al' });
const f = ins('6', { id: 1, name: 'Ann' });
const values = { a, b, c, d, e, f };

describe('groupByRow', () => {
  let testScheduler: TestScheduler;

  it('emits one group per row, each with that row\'s changes', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--d--|', values);
      const e1subs = '  ^-------------!';
      const expected = '--x--y--------|';
      const x = cold('    a-----c-----|', values);
      const y = cold('       b-----d--|', values);

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { x, y });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('keys each group by rowKey', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  --a--b--c--|', values);
      const expected = '--x--y-----|';

      expectObservable(e1.pipe(groupByRow(), map((group) => group.key))).toBe(expected, { x: rowKey(a), y: rowKey(b) });
    });
  });

  it('puts a numeric key and its string form in one group, another table in another', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable }) => {
      const asString = upd('7', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' }, ['name'], { key: { id: '1' } });
      const other = ins('8', { id: 1, name: 'Ann' }, { table: 'admins' });
      const e1 = hot('  --a--o--s--|', { a, o: other, s: asString });
      const expected = '--x--y-----|';
      const x = cold('    a-----s--|', { a, s: asString });
      const y = cold('       o-----|', { o: other });

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { x, y });
    });
  });

  it('closes a group when its duration emits and opens a new one for the row', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable }) => {
      const e1 = hot('  --a--c--e--f--|', values);
      const expected = '--x--------y--|';
      const x = cold('    a--c--(e|)   ', values);
      const y = cold('             f--|', values);

      const result = e1.pipe(groupByRow<User>({ duration: (group) => group.pipe(filter((change) => change.op === 'delete')) }));
      expectObservable(result).toBe(expected, { x, y });
    });
  });

  it('completes every row group of the table on a truncate and gives the truncate a group of its own', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable, expectSubscriptions }) => {
      const t = trunc('7');
      const e1 = hot('  --a--b--c--t--f--|', { ...values, t });
      const e1subs = '  ^----------------!';
      const expected = '--x--y-----z--w--|';
      const x = cold('    a-----c--|      ', values);
      const y = cold('       b-----|      ', values);
      const z = cold('             t-----|', { t });
      const w = cold('                f--|', values);

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { x, y, z, w });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('keys the truncate\'s group by its rowKey and sends it every truncate of the table', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable }) => {
      const t = trunc('7');
      const s = trunc('8');
      const e1 = hot('  --t--a--s--|', { a, t, s });
      const expected = '--z--x-----|';
      const z = cold('    t-----s--|', { t, s });
      const x = cold('       a--|   ', values);

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { z, x });
      expectObservable(e1.pipe(groupByRow(), map((group) => group.key))).toBe(expected, { z: rowKey(t), x: rowKey(a) });
      expect(rowKey(t)).toBe('["public","users",[]]');
    });
  });

  it('leaves the groups of other tables and schemas open on a truncate', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable }) => {
      const admin = ins('7', { id: 1, name: 'Ann' }, { table: 'admins' });
      const archived = ins('8', { id: 1, name: 'Ann' }, { schema: 'archive' });
      const t = trunc('9');
      const e1 = hot('  --a--o--r--t--|', { a, o: admin, r: archived, t });
      const expected = '--x--y--v--z--|';
      const x = cold('    a--------|   ', values);
      const y = cold('       o--------|', { o: admin });
      const v = cold('          r-----|', { r: archived });
      const z = cold('             t--|', { t });

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { x, y, v, z });
    });
  });

  it('closes a group on a truncate even when its duration has not emitted, and still when it emits or completes', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable }) => {
      const t = trunc('7');
      const e1 = hot('  --a--b--t--f--d--|', { ...values, t });
      const expected = '--x--y--z--w--v--|';
      // Row 1's groups live 4 frames (a's ends before t); row 2's never end by themselves,
      // so t ends b's; the truncate's group completes, without emitting, 2 frames in.
      const x = cold('    a---|           ', values);
      const y = cold('       b--|         ', values);
      const z = cold('          t-|       ', { t });
      const w = cold('             f---|  ', values);
      const v = cold('                d--|', values);

      const result = e1.pipe(
        groupByRow<User>({
          duration: (group) =>
            group.key === rowKey(t) ? timer(2).pipe(ignoreElements()) : group.key === rowKey(a) ? timer(4) : NEVER,
        }),
      );
      expectObservable(result).toBe(expected, { x, y, z, w, v });
    });
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  |  ');
      const e1subs = '                 (^!)';
      const expected = '               |   ';

      expectObservable(e1.pipe(groupByRow())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>>('  -');
      const e1subs = '                 ^';
      const expected = '               -';

      expectObservable(e1.pipe(groupByRow())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass an error to the outer stream and every open group', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--#', values);
      const e1subs = '  ^-------!';
      const expected = '--x--y--#';
      const x = cold('    a-----#', values);
      const y = cold('       b--#', values);

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { x, y });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should send an error downstream when a key cannot be encoded', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, cold, expectObservable, expectSubscriptions }) => {
      const bad = ins('9', { id: 9, name: 'Big' }, { key: { id: { n: 9n } } });
      const error = new TypeError('Do not know how to serialize a BigInt');
      const e1 = hot('  --a--z--b--|', { a, z: bad, b });
      const e1subs = '  ^----!      ';
      const expected = '--x--#      ';
      const x = cold('    a--#      ', values, error);

      expectObservable(e1.pipe(groupByRow())).toBe(expected, { x }, error);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--|', values);
      const e1subs = '  ^-------!   ';
      const unsub = '   --------!   ';
      const expected = '--x--y---   ';

      const keys = e1.pipe(groupByRow(), map((group) => group.key));
      expectObservable(keys, unsub).toBe(expected, { x: rowKey(a), y: rowKey(b) });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --a--b--c--d--|', values);
      const e1subs = '  ^-------!      ';
      const unsub = '   --------!      ';
      const expected = '--a--b---      ';

      const result = e1.pipe(
        mergeMap((change) => of(change)),
        groupByRow(),
        mergeMap((group) => group),
      );
      expectObservable(result, unsub).toBe(expected, values);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
