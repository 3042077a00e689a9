import { delay, mergeMap, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { batchChanges } from '../../operators/batchChanges.js';
import { coalesce } from '../../operators/coalesce.js';
import { markProcessed } from '../../src/delivery.js';
import type { Change } from '../../src/types.js';
import { committedAt, consumer, del, ins, trunc, upd, type User, newScheduler } from './fixtures.js';

const ann: User = { id: 1, name: 'Ann', email: 'a@x' };
const al: User = { id: 1, name: 'Al', email: 'a@x' };
const alb: User = { id: 1, name: 'Al', email: 'b@x' };
const bo: User = { id: 2, name: 'Bo' };
const bea: User = { id: 2, name: 'Bea' };
const cy: User = { id: 3, name: 'Cy' };

/** A change built field by field, for the expected merged results. */
function change(fields: Omit<Change<User>, 'schema' | 'table' | 'committedAt' | 'txid'> & { txid?: string }): Change<User> {
  return { schema: 'public', table: 'users', committedAt, txid: `tx${fields.id}`, ...fields };
}

describe('coalesce', () => {
  let testScheduler: TestScheduler;

  /** Runs one batch through coalesce() and expects `net`, or no emission at all if `net` is empty. */
  function expectNet(batch: Change<User>[], net: Change<User>[]): void {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const e1 = hot('  --x--|', { x: batch });
      const e1subs = '  ^----!';
      const expected = net.length > 0 ? '--y--|' : '-----|';

      expectObservable(e1.pipe(coalesce())).toBe(expected, { y: net });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  }

  it('merges update + update into one update: first old, last new, union of changed, last id and txid', () => {
    expectNet(
      [upd('1', al, ann, ['name'], { txid: '100' }), upd('2', alb, al, ['email'], { txid: '101' })],
      [change({ id: '2', txid: '101', op: 'update', key: { id: 1 }, old: ann, new: alb, changed: ['name', 'email'] })],
    );
  });

  it('keeps a column that changed and changed back in the union', () => {
    expectNet(
      [upd('1', al, ann, ['name']), upd('2', ann, al, ['name'])],
      [change({ id: '2', op: 'update', key: { id: 1 }, old: ann, new: ann, changed: ['name'] })],
    );
  });

  it('merges insert + update into an insert with the final row', () => {
    expectNet(
      [ins('1', ann), upd('2', al, ann, ['name'])],
      [change({ id: '2', op: 'insert', key: { id: 1 }, new: al, changed: ['id', 'name', 'email'] })],
    );
  });

  it('drops insert + delete, and never emits an empty batch', () => {
    expectNet([ins('1', ann), upd('2', al, ann), del('3', al)], []);
  });

  it('merges update + delete into a delete of the row as it was before the batch', () => {
    expectNet(
      [upd('1', al, ann, ['name']), upd('2', alb, al, ['email']), del('3', alb)],
      [change({ id: '3', op: 'delete', key: { id: 1 }, old: ann, changed: ['id', 'name', 'email'] })],
    );
  });

  it('merges delete + insert into an update listing the columns whose values differ', () => {
    const replaced: User = { id: 1, name: 'Ann', email: 'z@x', active: true };
    expectNet(
      [del('1', ann), ins('2', replaced)],
      [change({ id: '2', op: 'update', key: { id: 1 }, old: ann, new: replaced, changed: ['email', 'active'] })],
    );
  });

  it('turns delete + identical insert into an update with no changed column', () => {
    expectNet([del('1', ann), ins('2', ann)], [change({ id: '2', op: 'update', key: { id: 1 }, old: ann, new: ann, changed: [] })]);
  });

  it('compares nested values structurally for delete + insert', () => {
    type Doc = { id: number; tags: string[]; meta: { a: number } };
    const before: Doc = { id: 1, tags: ['x'], meta: { a: 1 } };
    const after: Doc = { id: 1, tags: ['x'], meta: { a: 2 } };
    const common = { schema: 'public', table: 'docs', key: { id: 1 }, committedAt } as const;
    const deletion: Change<Doc> = { ...common, id: '1', txid: 'tx1', op: 'delete', old: before, changed: ['id', 'tags', 'meta'] };
    const insertion: Change<Doc> = { ...common, id: '2', txid: 'tx2', op: 'insert', new: after, changed: ['id', 'tags', 'meta'] };
    const merged: Change<Doc> = { ...common, id: '2', txid: 'tx2', op: 'update', old: before, new: after, changed: ['meta'] };

    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  --x--|', { x: [deletion, insertion] });
      const expected = '--y--|';
      expectObservable(e1.pipe(coalesce())).toBe(expected, { y: [merged] });
    });
  });

  it('treats insert, delete, insert as the last insert', () => {
    const again = ins('3', al);
    expectNet([ins('1', ann), del('2', ann), again], [again]);
  });

  it('lets the later change win after an impossible sequence', () => {
    const second = ins('2', al);
    expectNet([ins('1', ann), second], [second]);
    const update = upd('2', al, ann);
    expectNet([del('1', ann), update], [update]);
  });

  it('orders rows by the position of their last change and keeps the last committedAt', () => {
    const later = new Date('2024-01-01T00:00:05.000Z');
    const a1 = ins('1', ann);
    const b1 = upd('2', bea, bo, ['name']);
    const a2 = { ...upd('3', al, ann, ['name']), committedAt: later };
    const c1 = ins('4', cy);
    expectNet(
      [a1, b1, a2, c1],
      [b1, { ...change({ id: '3', op: 'insert', key: { id: 1 }, new: al, changed: ['id', 'name', 'email'] }), committedAt: later }, c1],
    );
  });

  it('passes a row with a single change through as the same object', () => {
    const a1 = ins('1', ann);
    const b1 = ins('2', bo);
    const seen: Change<User>[][] = [];
    of([a1, b1]).pipe(coalesce()).subscribe((net) => seen.push(net));
    expect(seen).toHaveLength(1);
    expect(seen[0]?.[0]).toBe(a1);
    expect(seen[0]?.[1]).toBe(b1);
  });

  it('keeps rows of different tables apart and merges a numeric key with its string form', () => {
    const other = ins('2', ann, { table: 'admins' });
    const asString = upd('3', al, ann, ['name'], { key: { id: '1' } });
    expectNet(
      [ins('1', ann), other, asString],
      [other, change({ id: '3', op: 'insert', key: { id: '1' }, new: al, changed: ['id', 'name', 'email'] })],
    );
  });

  it('drops every earlier change of the table on a truncate, keeps the truncate, and folds later changes from scratch', () => {
    const t = trunc('3');
    const cyd: User = { id: 3, name: 'Cyd' };
    expectNet(
      [ins('1', ann), upd('2', bea, bo, ['name']), t, ins('4', cy), upd('5', cyd, cy, ['name'])],
      [t, change({ id: '5', op: 'insert', key: { id: 3 }, new: cyd, changed: ['id', 'name'] })],
    );
  });

  it('keeps an insert after a truncate an insert, even when the row was deleted before it', () => {
    const t = trunc('2');
    const again = ins('3', al);
    expectNet([del('1', ann), t, again], [t, again]);
  });

  it('keeps only the last of several truncates', () => {
    const last = trunc('4');
    expectNet([ins('1', ann), trunc('2'), ins('3', bo), last], [last]);
  });

  it('emits a batch holding only a truncate, and drops what nets to nothing before it', () => {
    const t = trunc('3');
    expectNet([ins('1', ann), del('2', ann), t], [t]);
    const alone = trunc('4');
    expectNet([alone], [alone]);
  });

  it('leaves changes of other tables and schemas alone on a truncate', () => {
    const admin = ins('1', ann, { table: 'admins' });
    const elsewhere = ins('2', ann, { schema: 'archive' });
    const t = trunc('4');
    const admin2 = ins('5', cy, { table: 'admins' });
    expectNet([admin, elsewhere, ins('3', bo), t, admin2], [admin, elsewhere, t, admin2]);
  });

  it('passes the truncate through as the same object', () => {
    const t = trunc('2');
    const seen: Change<User>[][] = [];
    of([ins('1', ann), t]).pipe(coalesce()).subscribe((net) => seen.push(net));
    expect(seen).toHaveLength(1);
    expect(seen[0]?.[0]).toBe(t);
  });

  it('lets a truncate carry every change it drops, nets-to-nothing included, until it is acknowledged', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // Row 1: i1 then d1 (nothing); row 2: u2; then the truncate; then row 3: c.
    const i1 = ins('1', ann);
    const d1 = del('2', ann);
    const u2 = upd('3', bea, bo, ['name']);
    const t = trunc('4');
    const c = ins('5', cy);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -abcde---|', { a: i1, b: d1, c: u2, d: t, e: c });
      const expected = '-----x---|';

      const batches = e1.pipe(mailer.delivered(), batchChanges({ size: 5 }), coalesce());
      expectObservable(batches).toBe(expected, { x: [t, c] });
    });
    // Nothing is marked when the batch is coalesced: i1 and d1 are carried by t, not done at once.
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(5);
    // Acknowledging t completes itself (4), then 1, 2 and 3: the position moves to 1, 2, then 4.
    markProcessed(t);
    expect(mailer.moves.map((move) => move.id)).toEqual(['1', '2', '4']);
    markProcessed(c);
    expect(mailer.moves.map((move) => move.id)).toEqual(['1', '2', '4', '5']);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('acknowledges the dropped changes with the truncate at the end of a pipeline', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    const a = ins('1', ann);
    const b = upd('2', al, ann, ['name']);
    const t = trunc('3');
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -abt---|', { a, b, t });
      const expected = '-----x-|';

      // The net batch takes 2 frames to handle.
      const handled = e1.pipe(mailer.delivered(), batchChanges({ size: 3 }), coalesce(), delay(2), acknowledge());
      expectObservable(handled).toBe(expected, { x: [t] });
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 5 },
      { id: '3', frame: 5 },
    ]);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('coalesces each batch on its own', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const i1 = ins('1', ann);
      const u1 = upd('2', al, ann, ['name']);
      const e1 = hot('  --x--y--z--|', { x: [i1], y: [u1, del('3', al)], z: [ins('4', bo), del('5', bo)] });
      const e1subs = '  ^----------!';
      const expected = '--x--y-----|';

      expectObservable(e1.pipe(coalesce())).toBe(expected, {
        x: [i1],
        y: [change({ id: '3', op: 'delete', key: { id: 1 }, old: ann, changed: ['id', 'name', 'email'] })],
      });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('lets the merged change carry every change of its row, all acknowledged with it', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // Row 1: a then b (merged into a new insert); row 2: c alone.
    const a = ins('1', ann);
    const b = upd('2', al, ann, ['name']);
    const c = ins('3', bo);
    const merged = change({ id: '2', op: 'insert', key: { id: 1 }, new: al, changed: ['id', 'name', 'email'] });
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -abc---|', { a, b, c });
      const expected = '-----x-|';

      // The net batch takes 2 frames to handle.
      const handled = e1.pipe(mailer.delivered(), batchChanges({ size: 3 }), coalesce(), delay(2), acknowledge());
      expectObservable(handled).toBe(expected, { x: [merged, c] });
    });
    // Nothing is done at 3, when the batch is coalesced; acknowledging the merged change
    // at 5 completes a (1) and b (2), then c (3).
    expect(mailer.moves).toEqual([
      { id: '1', frame: 5 },
      { id: '2', frame: 5 },
      { id: '3', frame: 5 },
    ]);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('marks every change of a row that nets to nothing processed, even when the batch is not emitted', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    const i1 = ins('1', ann);
    const u1 = upd('2', al, ann, ['name']);
    const d1 = del('3', al);
    const i2 = ins('4', bo);
    const d2 = del('5', bo);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -x--y--|', { x: [i1, u1, d1], y: [i2, d2] });
      const expected = '-------|';

      const batches = e1.pipe(
        mergeMap((batch) => of(batch.map((item) => mailer.deliver(item)))),
        coalesce(),
        acknowledge(),
      );
      expectObservable(batches).toBe(expected);
    });
    expect(mailer.moves).toEqual([
      { id: '1', frame: 1 },
      { id: '2', frame: 1 },
      { id: '3', frame: 1 },
      { id: '4', frame: 4 },
      { id: '5', frame: 4 },
    ]);
  });

  it('keeps the earlier changes of a row pending until the winning change is acknowledged', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    // insert, delete, insert: the net change is the last insert itself.
    const i1 = ins('1', ann);
    const d1 = del('2', ann);
    const again = ins('3', al);
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -abc---|', { a: i1, b: d1, c: again });
      const expected = '---x---|';

      const batches = e1.pipe(mailer.delivered(), batchChanges({ size: 3 }), coalesce());
      expectObservable(batches).toBe(expected, { x: [again] });
    });
    // Not acknowledged: all three stay pending, to be delivered again after a crash.
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(3);
    // Acknowledging the winner completes 3 (waiting for 1 and 2), then 1, then 2: 1, then 3.
    markProcessed(again);
    expect(mailer.moves.map((move) => move.id)).toEqual(['1', '3']);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('marks nothing when coalescing a batch throws', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    const bad = ins('3', bo, { key: { id: { n: 2n } } });
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -x--|', { x: [ins('1', ann), upd('2', al, ann, ['name']), bad] });
      const expected = '-#   ';

      const batches = e1.pipe(
        mergeMap((batch) => of(batch.map((item) => mailer.deliver(item)))),
        coalesce(),
      );
      expectObservable(batches).toBe(expected, undefined, new TypeError('Do not know how to serialize a BigInt'));
    });
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(3);
  });

  it('carries nothing onto a truncate when coalescing its batch throws', () => {
    testScheduler = newScheduler();
    const mailer = consumer(testScheduler);
    const t = trunc('2');
    const bad = ins('3', bo, { key: { id: { n: 2n } } });
    testScheduler.run(({ hot, expectObservable }) => {
      const e1 = hot('  -x--|', { x: [ins('1', ann), t, bad] });
      const expected = '-#   ';

      const batches = e1.pipe(
        mergeMap((batch) => of(batch.map((item) => mailer.deliver(item)))),
        coalesce(),
      );
      expectObservable(batches).toBe(expected, undefined, new TypeError('Do not know how to serialize a BigInt'));
    });
    // Had t carried 1, acknowledging t would move the position; 1 and bad still hold it back.
    markProcessed(t);
    expect(mailer.moves).toEqual([]);
    // 1 and bad are unprocessed; t is processed but waits behind them.
    expect(mailer.ledger.inFlight).toBe(2);
  });

  it('should handle an empty batch by emitting nothing', () => {
    expectNet([], []);
  });

  it('should handle empty', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>[]>('  |  ');
      const e1subs = '                   (^!)';
      const expected = '                 |   ';

      expectObservable(e1.pipe(coalesce())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should handle never', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      const e1 = cold<Change<User>[]>('  -');
      const e1subs = '                   ^';
      const expected = '                 -';

      expectObservable(e1.pipe(coalesce())).toBe(expected);
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should pass through an error', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const a1 = ins('1', ann);
      const e1 = hot('  --x--#', { x: [a1] });
      const e1subs = '  ^----!';
      const expected = '--x--#';

      expectObservable(e1.pipe(coalesce())).toBe(expected, { x: [a1] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should send an error downstream when a key cannot be encoded', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const bad = ins('2', bo, { key: { id: { n: 2n } } });
      const e1 = hot('  --x--y--|', { x: [ins('1', ann)], y: [bad] });
      const e1subs = '  ^----!   ';
      const expected = '--x--#   ';

      expectObservable(e1.pipe(coalesce())).toBe(
        expected,
        { x: [ins('1', ann)] },
        new TypeError('Do not know how to serialize a BigInt'),
      );
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should allow unsubscribing early and explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const a1 = ins('1', ann);
      const e1 = hot('  --x--y--|', { x: [a1], y: [ins('2', bo)] });
      const e1subs = '  ^---!    ';
      const unsub = '   ----!    ';
      const expected = '--x--    ';

      expectObservable(e1.pipe(coalesce()), unsub).toBe(expected, { x: [a1] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });

  it('should not break unsubscription chains when unsubscribed explicitly', () => {
    testScheduler = newScheduler();
    testScheduler.run(({ hot, expectObservable, expectSubscriptions }) => {
      const a1 = ins('1', ann);
      const e1 = hot('  --x--y--|', { x: [a1], y: [ins('2', bo)] });
      const e1subs = '  ^---!    ';
      const unsub = '   ----!    ';
      const expected = '--x--    ';

      const result = e1.pipe(
        mergeMap((batch) => of(batch)),
        coalesce(),
        mergeMap((batch) => of(batch)),
      );
      expectObservable(result, unsub).toBe(expected, { x: [a1] });
      expectSubscriptions(e1.subscriptions).toBe(e1subs);
    });
  });
});
