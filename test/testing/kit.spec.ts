import { concat, defer, filter, map, mergeMap, of, timer } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { acknowledge, batchChanges, ofOperation, rowKey, whereChanged } from '../../operators/index.js';
import { PgTideError } from '../../src/errors.js';
import type { Change } from '../../src/types.js';
import { createTestTide, del, insert, resetChangeIds, TEST_COMMITTED_AT, truncate, update } from '../../src/testing/index.js';

function newScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

describe('change builders', () => {
  beforeEach(() => resetChangeIds());

  it('insert builds a complete insert into public.<table> with defaults', () => {
    const change = insert('users', { id: 7, name: 'Ann' });
    expect(change).toStrictEqual({
      id: '1',
      txid: '1',
      schema: 'public',
      table: 'users',
      op: 'insert',
      key: { id: 7 },
      new: { id: 7, name: 'Ann' },
      changed: ['id', 'name'],
      committedAt: new Date('2024-01-01T00:00:00.000Z'),
    });
    expect(change.committedAt).toEqual(TEST_COMMITTED_AT);
  });

  it('update lists the columns whose values differ, comparing values deeply', () => {
    const change = update(
      'users',
      { id: 7, name: 'Al', tags: ['a'], meta: { n: 2 } },
      { id: 7, name: 'Ann', tags: ['a'], meta: { n: 1 } },
    );
    expect(change).toStrictEqual({
      id: '1',
      txid: '1',
      schema: 'public',
      table: 'users',
      op: 'update',
      key: { id: 7 },
      new: { id: 7, name: 'Al', tags: ['a'], meta: { n: 2 } },
      old: { id: 7, name: 'Ann', tags: ['a'], meta: { n: 1 } },
      changed: ['name', 'meta'],
      committedAt: TEST_COMMITTED_AT,
    });
  });

  it('update counts a column present on one side only as changed', () => {
    const change = update<Record<string, unknown>>('users', { id: 7, email: 'a@x' }, { id: 7, name: 'Ann' });
    expect(change.changed).toEqual(['email', 'name']);
  });

  it('del builds a delete with the row as old and no new', () => {
    const change = del('users', { id: 7, name: 'Ann' });
    expect(change).toStrictEqual({
      id: '1',
      txid: '1',
      schema: 'public',
      table: 'users',
      op: 'delete',
      key: { id: 7 },
      old: { id: 7, name: 'Ann' },
      changed: ['id', 'name'],
      committedAt: TEST_COMMITTED_AT,
    });
    expect('new' in change).toBe(false);
  });

  it('truncate builds a change with an empty key, no changed column and no rows', () => {
    const change = truncate('users');
    expect(change).toStrictEqual({
      id: '1',
      txid: '1',
      schema: 'public',
      table: 'users',
      op: 'truncate',
      key: {},
      changed: [],
      committedAt: TEST_COMMITTED_AT,
    });
    expect('new' in change).toBe(false);
    expect('old' in change).toBe(false);
  });

  it('truncate takes schema.name, id, txid and committedAt, and ignores key and changed', () => {
    const when = new Date('2025-06-01T12:00:00.000Z');
    const sloppy = { id: 9, txid: 900n, committedAt: when, key: ['id'], changed: ['x'] };
    expect(truncate('billing.invoices', sloppy)).toStrictEqual({
      id: '9',
      txid: '900',
      schema: 'billing',
      table: 'invoices',
      op: 'truncate',
      key: {},
      changed: [],
      committedAt: when,
    });
    // It shares the builders' counter.
    expect([insert('t', { id: 1 }).id, truncate('t').id]).toEqual(['1', '2']);
  });

  it('numbers changes from a counter shared by all builders, which resetChangeIds restarts', () => {
    expect([insert('t', { id: 1 }).id, update('t', { id: 1 }, { id: 1 }).id, del('t', { id: 1 }).id]).toEqual(['1', '2', '3']);
    resetChangeIds(10);
    expect(insert('t', { id: 1 }).id).toBe('10');
    expect(insert('t', { id: 1 }).txid).toBe('11');
  });

  it('takes schema.name, key columns, id, txid, changed and committedAt from the arguments', () => {
    const when = new Date('2025-06-01T12:00:00.000Z');
    const row = { tenant: 'a', no: 7, total: 10 };
    const change = update('billing.invoices', { ...row, total: 12 }, row, {
      id: 42n,
      txid: 900,
      key: ['tenant', 'no'],
      changed: ['total', 'note'],
      committedAt: when,
    });
    expect(change).toMatchObject({
      id: '42',
      txid: '900',
      schema: 'billing',
      table: 'invoices',
      key: { tenant: 'a', no: 7 },
      changed: ['total', 'note'],
      committedAt: when,
    });
    // An explicit id leaves the counter alone.
    expect(insert('t', { id: 1 }).id).toBe('1');
  });

  it('gives each change its own committedAt Date', () => {
    const a = insert('t', { id: 1 });
    const b = insert('t', { id: 1 });
    expect(a.committedAt).not.toBe(b.committedAt);
    expect(a.committedAt).toEqual(b.committedAt);
  });

  it('builds changes that pgtide operators treat as the same row', () => {
    expect(rowKey(update('users', { id: 7, n: 2 }, { id: 7, n: 1 }))).toBe(rowKey(insert('public.users', { id: 7, n: 0 })));
  });
});

describe('a pipeline tested with createTestTide', () => {
  it('mails quota changes in pairs and acknowledges them', () => {
    const testScheduler = new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
    const testTide = createTestTide(testScheduler);
    const a = insert('mail_users', { id: 1, quota_bytes: 100 });
    const b = update('mail_users', { id: 1, quota_bytes: 200 }, { id: 1, quota_bytes: 100 });
    const c = update('mail_users', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
    const d = update('mail_users', { id: 2, quota_bytes: 900 }, { id: 2, quota_bytes: 500 });
    const e = update('mail_users', { id: 2, quota_bytes: 950 }, { id: 2, quota_bytes: 900 });

    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('mail_users', hot('-a-b-c-d-e-----', { a, b, c, d, e }));
      const mails$ = testTide.changes$('mail_users', { consumer: 'mailer' }).pipe(
        ofOperation('update'), // drops a
        whereChanged('quota_bytes'), // drops c
        batchChanges({ size: 2, time: 5 }), // [b, d] when full, [e] 5 frames after e
        acknowledge(),
      );
      expectObservable(mails$).toBe('-------x------y', { x: [b, d], y: [e] });
    });

    expect(testTide.acknowledged('mailer')).toEqual([
      { id: a.id, frame: 1 }, // a needs no work
      { id: c.id, frame: 7 }, // c, dropped at 5, waits for b
      { id: d.id, frame: 7 },
      { id: e.id, frame: 14 },
    ]);
  });
});

describe('createTestTide', () => {
  let testScheduler: TestScheduler;

  afterEach(() => vi.restoreAllMocks());

  it('passes the source\'s changes through as the same objects without a consumer', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    const b = del('users', { id: 1 });
    const seen: Change[] = [];
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold('  -a-b-|', { a, b });
      const e1subs = '   ^----!';
      testTide.source('public.users', e1);

      const users$ = testTide.changes$('users');
      users$.subscribe((change) => seen.push(change));
      expectObservable(users$).toBe('-a-b-|', { a, b });
      expectSubscriptions(e1.subscriptions).toBe([e1subs, e1subs]);
    });
    expect(seen).toHaveLength(2);
    expect(seen[0]).toBe(a);
    expect(seen[1]).toBe(b);
  });

  it('errors the stream with UNKNOWN_TABLE for a table without a source', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    testScheduler.run(({ expectObservable }) => {
      expectObservable(testTide.changes$('nope')).toBe(
        '#',
        undefined,
        new PgTideError(
          'UNKNOWN_TABLE',
          "createTestTide(): no source for public.nope; call testTide.source('nope', observable) first",
          { table: 'public.nope' },
        ),
      );
    });
    expect(() => testTide.changes$('nope')).not.toThrow();
  });

  it('looks the source up when the stream is subscribed', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    testScheduler.run(({ cold, expectObservable }) => {
      const users$ = testTide.changes$('users');
      testTide.source('users', cold('-a|', { a }));
      expectObservable(users$).toBe('-a|', { a });
    });
  });

  it('delivers a consumer\'s changes in a real ledger: acknowledge() moves its position', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    const b = insert('users', { id: 2 });
    const seen: Change[] = [];
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a--b--|', { a, b });
      const e1subs = '  ^------!';
      testTide.source('users', e1);

      const acknowledged$ = testTide.changes$('users', { consumer: 'mailer' }).pipe(
        map((change) => {
          seen.push(change);
          return change;
        }),
        acknowledge(),
      );
      expectObservable(acknowledged$).toBe('-a--b--|', { a, b });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(testTide.acknowledged('mailer')).toEqual([
      { id: a.id, frame: 1 },
      { id: b.id, frame: 4 },
    ]);
    expect(testTide.processedId('mailer')).toBe(b.id);
    // Its own copy of each change, as a real stream delivers.
    expect(seen[0]).toEqual(a);
    expect(seen[0]).not.toBe(a);
  });

  it('moves a consumer\'s position only over a contiguous run of processed changes', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    const b = insert('users', { id: 2 });
    const c = insert('users', { id: 3 });
    const work = new Map([
      [a.id, 5],
      [b.id, 1],
      [c.id, 1],
    ]);
    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('users', hot('-abc---|', { a, b, c }));
      const handled$ = testTide.changes$('users', { consumer: 'mailer' }).pipe(
        mergeMap((change) => timer(work.get(change.id)!).pipe(map(() => change))),
        acknowledge(),
      );
      expectObservable(handled$).toBe('---bc-a|', { a, b, c });
    });
    // b and c are done at 3 and 4, but a holds the position until 6.
    expect(testTide.acknowledged('mailer')).toEqual([{ id: c.id, frame: 6 }]);
  });

  it('records nothing while nothing is acknowledged, and keeps consumers apart', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('users', hot('-a-|', { a }));
      expectObservable(testTide.changes$('users', { consumer: 'idle' })).toBe('-a-|', { a });
      expectObservable(testTide.changes$('users', { consumer: 'busy' }).pipe(acknowledge())).toBe('-a-|', { a });
    });
    expect(testTide.acknowledged('idle')).toEqual([]);
    expect(testTide.processedId('idle')).toBeUndefined();
    expect(testTide.acknowledged('busy')).toEqual([{ id: a.id, frame: 1 }]);
    expect(testTide.acknowledged('never-used')).toEqual([]);
  });

  it('starts a new subscription of a consumer at its processed position', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    const b = insert('users', { id: 2 });
    const c = insert('users', { id: 3 });
    testScheduler.run(({ cold, expectObservable }) => {
      testTide.source('users', cold('-a-b|', { a, b }));
      // The first run acknowledges a only; b is delivered and left unacknowledged.
      const first$ = testTide.changes$('users', { consumer: 'mailer' }).pipe(
        filter((change) => change.id === a.id),
        acknowledge(),
      );
      const second$ = defer(() => {
        testTide.source('users', cold('-c|', { c }));
        return testTide.changes$('users', { consumer: 'mailer' }).pipe(acknowledge());
      });
      const run$ = concat(first$, second$);
      expectObservable(run$).toBe('-a---c|', { a, c });
    });
    // The unacknowledged b of the first subscription does not hold the second one back.
    expect(testTide.acknowledged('mailer')).toEqual([
      { id: a.id, frame: 1 },
      { id: c.id, frame: 5 },
    ]);
  });

  it('stamps moves with Date.now() without a scheduler', () => {
    vi.spyOn(Date, 'now').mockReturnValue(1_700_000_000_000);
    const testTide = createTestTide();
    const a = insert('users', { id: 1 });
    testTide.source('users', of(a));
    const seen: Change[] = [];
    testTide
      .changes$('users', { consumer: 'mailer' })
      .pipe(acknowledge())
      .subscribe((change) => seen.push(change));
    expect(seen).toEqual([a]);
    expect(testTide.acknowledged('mailer')).toEqual([{ id: a.id, frame: 1_700_000_000_000 }]);
  });

  it('keeps only the row named by rowId: a value for a one-column key, or an object of key columns', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const one = insert('users', { id: 1 });
    const two = insert('users', { id: 2 });
    const pair = insert('members', { org: 'x', user: 1 }, { key: ['org', 'user'] });
    const other = insert('members', { org: 'y', user: 1 }, { key: ['org', 'user'] });
    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('users', hot('-o-t-|', { o: one, t: two }));
      testTide.source('members', hot('-p-q-|', { p: pair, q: other }));
      expectObservable(testTide.changes$('users', { rowId: '2' })).toBe('---t-|', { t: two });
      expectObservable(testTide.changes$('users', { rowId: { id: 1 } })).toBe('-o---|', { o: one });
      expectObservable(testTide.changes$('members', { rowId: { org: 'y', user: '1' } })).toBe('---q-|', { q: other });
      expectObservable(testTide.changes$('members', { rowId: 1 })).toBe('-----|');
    });
  });

  it('with columns, drops updates of other columns and keeps the key plus those columns', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1, name: 'Ann', quota: 1 });
    const b = update('users', { id: 1, name: 'Al', quota: 1 }, { id: 1, name: 'Ann', quota: 1 });
    const c = update('users', { id: 1, name: 'Al', quota: 2 }, { id: 1, name: 'Al', quota: 1 });
    const d = del('users', { id: 1, name: 'Al', quota: 2 });
    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('users', hot('-a-b-c-d-|', { a, b, c, d }));
      const projected = {
        a: { ...a, new: { id: 1, quota: 1 } },
        c: { ...c, new: { id: 1, quota: 2 }, old: { id: 1, quota: 1 } },
        d: { ...d, old: { id: 1, quota: 2 } },
      };
      expectObservable(testTide.changes$('users', { columns: ['quota'] })).toBe('-a---c-d-|', projected);
      expectObservable(testTide.changes$('users', { rowId: 1, field: 'quota' })).toBe('-a---c-d-|', projected);
    });
  });

  it('delivers a truncate to every stream of its table, rowId and columns streams included', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const one = insert('users', { id: 1, quota: 1 });
    const two = insert('users', { id: 2, quota: 1 });
    const gone = truncate('users');
    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('users', hot('-o-t-x-|', { o: one, t: two, x: gone }));
      expectObservable(testTide.changes$('users', { rowId: 1 })).toBe('-o---x-|', { o: one, x: gone });
      expectObservable(testTide.changes$('users', { rowId: { id: 2 }, field: 'quota' })).toBe('---t-x-|', { t: two, x: gone });
      expectObservable(testTide.changes$('users', { columns: ['quota'], consumer: 'audit' })).toBe('-o-t-x-|', { o: one, t: two, x: gone });
    });
  });

  it('counts a change a consumer stream filters out as processed', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    const b = insert('users', { id: 2 });
    const c = insert('users', { id: 3 });
    testScheduler.run(({ hot, expectObservable }) => {
      testTide.source('users', hot('-a-b-c-|', { a, b, c }));
      const row2$ = testTide.changes$('users', { consumer: 'mailer', rowId: 2 }).pipe(acknowledge());
      expectObservable(row2$).toBe('---b---|', { b });
    });
    expect(testTide.acknowledged('mailer')).toEqual([
      { id: a.id, frame: 1 },
      { id: b.id, frame: 3 },
      { id: c.id, frame: 5 },
    ]);
  });

  it('should pass through an error and unsubscribe from the source', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a-#', { a });
      const e1subs = '  ^--!';
      testTide.source('users', e1);
      expectObservable(testTide.changes$('users', { consumer: 'mailer' })).toBe('-a-#', { a });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    const testTide = createTestTide(testScheduler);
    const a = insert('users', { id: 1 });
    const b = insert('users', { id: 2 });
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  -a--b--|', { a, b });
      const e1subs = '  ^--!    ';
      const unsub = '   ---!    ';
      testTide.source('users', e1);
      expectObservable(testTide.changes$('users', { consumer: 'mailer' }).pipe(acknowledge()), unsub).toBe('-a--', { a });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
    expect(testTide.acknowledged('mailer')).toEqual([{ id: a.id, frame: 1 }]);
  });
});
