import { map, throwError, timer } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it, vi } from 'vitest';
import { batchChanges } from '../../operators/batchChanges.js';
import { processChanges } from '../../operators/processChanges.js';
import { PgTideError } from '../../src/errors.js';
import type { Change } from '../../src/types.js';
import { consumer, ins, newScheduler, trunc, upd } from './fixtures.js';

// Rows 1 and 2: a1, a2 change row 1; b1 row 2; ids follow delivery order.
const a1 = ins('1', { id: 1, name: 'Ann' });
const b1 = ins('2', { id: 2, name: 'Bo' });
const a2 = upd('3', { id: 1, name: 'Al' }, { id: 1, name: 'Ann' });
const b2 = upd('4', { id: 2, name: 'Bob' }, { id: 2, name: 'Bo' });
const truncate = trunc('5');

/** A handler taking `frames` frames per call, recording when each call started. */
function slowHandler(frames: number, scheduler: TestScheduler, started: Array<[string, number]>) {
  return (value: Change<unknown>) => {
    started.push([value.id, scheduler.now()]);
    return timer(frames);
  };
}

describe('processChanges', () => {
  it('runs at most `concurrency` handlers, never two for one row, each row in delivery order', () => {
    const scheduler = newScheduler();
    const started: Array<[string, number]> = [];
    scheduler.run(({ hot, expectObservable }) => {
      const source = hot('-abcd-|', { a: a1, b: b1, c: a2, d: b2 });
      const expected = '   ----ab-c(d|)';
      expectObservable(source.pipe(processChanges(slowHandler(3, scheduler, started), { concurrency: 2 }))).toBe(expected, {
        a: a1, b: b1, c: a2, d: b2,
      });
    });
    // a2 (row 1) waits for a1; b2 (row 2) for b1; a1 and b1 overlap.
    expect(started).toEqual([['1', 1], ['2', 2], ['3', 4], ['4', 5]]);
  });

  it('with concurrency 1 handles one change at a time in delivery order', () => {
    const scheduler = newScheduler();
    const started: Array<[string, number]> = [];
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('(abc|)', { a: a1, b: b1, c: a2 });
      expectObservable(source.pipe(processChanges(slowHandler(2, scheduler, started)))).toBe('--a-b-(c|)', { a: a1, b: b1, c: a2 });
    });
    expect(started.map(([id]) => id)).toEqual(['1', '2', '3']);
  });

  it('takes handlers that return at once (a plain value) or a promise-free observable that completes synchronously', () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler);
    const handled: string[] = [];
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('a-b|', { a: a1, b: b1 });
      const handler = (value: Change<unknown>) => {
        handled.push(value.id);
        return value.id;
      };
      expectObservable(source.pipe(mailer.delivered(), processChanges(handler, { concurrency: 2 }))).toBe('a-b|', { a: a1, b: b1 });
    });
    expect(handled).toEqual(['1', '2']);
    expect(mailer.moves).toEqual([{ id: '1', frame: 0 }, { id: '2', frame: 2 }]);
  });

  it('with synchronous handlers still keeps each row in delivery order', () => {
    const scheduler = newScheduler();
    const handled: string[] = [];
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('(abcd|)', { a: a1, b: b1, c: a2, d: b2 });
      const handler = (value: Change<unknown>) => {
        handled.push(value.id);
        return null;
      };
      expectObservable(source.pipe(processChanges(handler, { concurrency: 3 }))).toBe('(abcd|)', { a: a1, b: b1, c: a2, d: b2 });
    });
    expect(handled).toEqual(['1', '2', '3', '4']);
  });

  it('a truncate waits for every running change of its table, and later changes wait for it', () => {
    const scheduler = newScheduler();
    const started: Array<[string, number]> = [];
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('(atb|)', { a: a1, t: truncate, b: b1 });
      expectObservable(source.pipe(processChanges(slowHandler(2, scheduler, started), { concurrency: 3 }))).toBe('--a-t-(b|)', {
        a: a1, t: truncate, b: b1,
      });
    });
    expect(started).toEqual([['1', 0], ['5', 2], ['2', 4]]);
  });

  it('acknowledges a change when its handler succeeds, in delivery order for the position', () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler);
    const started: Array<[string, number]> = [];
    scheduler.run(({ hot, expectObservable }) => {
      const source = hot('-a-b-|', { a: a1, b: b1 });
      expectObservable(source.pipe(mailer.delivered(), processChanges(slowHandler(3, scheduler, started), { concurrency: 2 }))).toBe(
        '----a-(b|)',
        { a: a1, b: b1 },
      );
    });
    expect(mailer.moves).toEqual([{ id: '1', frame: 4 }, { id: '2', frame: 6 }]);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('retries a failing handler after backoff(attempt), then goes on', () => {
    const scheduler = newScheduler();
    const calls: number[] = [];
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('a|', { a: a1 });
      const handler = () => {
        calls.push(scheduler.now());
        return calls.length < 3 ? throwError(() => new Error('busy')) : timer(1);
      };
      // Calls at 0, 0+2, 2+4; the third succeeds one frame later.
      expectObservable(source.pipe(processChanges(handler, { attempts: 3, backoff: (attempt) => 2 * attempt }))).toBe('-------(a|)', { a: a1 });
    });
    expect(calls).toEqual([0, 2, 6]);
  });

  it('after `attempts` failures, for a change no dead letter can keep, errors the stream with PROCESSING_FAILED and does not acknowledge it', () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler);
    const emitted: string[] = [];
    let failure: unknown;
    const calls: number[] = [];
    scheduler.run(({ cold, flush }) => {
      const source = cold('ab|', { a: a1, b: b1 });
      const handler = (value: Change<unknown>) => {
        if (value.id !== '1') return timer(1);
        calls.push(scheduler.now());
        return throwError(() => new Error('card declined'));
      };
      source.pipe(mailer.delivered(), processChanges(handler, { attempts: 2, backoff: () => 5, concurrency: 2 })).subscribe({
        next: (value) => emitted.push(value.id),
        error: (error: unknown) => (failure = error),
      });
      flush();
    });
    expect(calls).toEqual([0, 5]);
    expect(emitted).toEqual(['2']);
    expect(failure).toBeInstanceOf(PgTideError);
    expect(failure).toMatchObject({ code: 'PROCESSING_FAILED', details: { attempts: 2, change: a1 } });
    expect((failure as Error).message).toContain('card declined');
    // b1 is acknowledged; a1 never is, so the position stays before it.
    expect(mailer.moves).toEqual([]);
    expect(mailer.ledger.inFlight).toBe(1);
  });

  it("with onExhausted: 'stop' errors the stream without keeping a dead letter, even where one could be kept", () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler, true);
    let failure: unknown;
    scheduler.run(({ cold, flush }) => {
      const handler = () => throwError(() => new Error('card declined'));
      cold('a|', { a: a1 })
        .pipe(mailer.delivered(), processChanges(handler, { attempts: 1, onExhausted: 'stop' }))
        .subscribe({ error: (error: unknown) => (failure = error) });
      flush();
    });
    expect(failure).toMatchObject({ code: 'PROCESSING_FAILED' });
    expect(mailer.deadLetters).toEqual([]);
    expect(mailer.moves).toEqual([]);
  });

  it('after `attempts` failures keeps the change as a dead letter, acknowledges it, and lets its row go on', async () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler, true);
    const emitted: string[] = [];
    const handled: string[] = [];
    let done = false;
    scheduler.run(({ cold, flush }) => {
      const handler = (value: Change<unknown>) => {
        handled.push(value.id);
        return value.id === '1' ? throwError(() => new Error('card declined')) : timer(1);
      };
      cold('ab-c|', { a: a1, b: b1, c: a2 })
        .pipe(mailer.delivered(), processChanges(handler, { attempts: 2, backoff: () => 1, concurrency: 2 }))
        .subscribe({ next: (value) => emitted.push(value.id), complete: () => (done = true) });
      flush();
    });
    // Keeping a dead letter is asynchronous (a database write): a2 follows once it is kept.
    await vi.waitFor(() => expect(done).toBe(true));
    expect(mailer.deadLetters).toEqual([{ id: '1', error: 'card declined', attempts: 2 }]);
    expect(handled).toEqual(['1', '2', '1', '3']);
    expect(emitted).toEqual(['2', '3']);
    expect(mailer.ledger.inFlight).toBe(0);
    expect(mailer.moves.at(-1)?.id).toBe('3');
  });

  it('keeps every change of a failed batch as a dead letter', async () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler, true);
    let done = false;
    scheduler.run(({ cold, flush }) => {
      cold('(ab|)', { a: a1, b: b1 })
        .pipe(mailer.delivered(), batchChanges({ size: 2 }), processChanges(() => throwError(() => new Error('down')), { attempts: 1 }))
        .subscribe({ complete: () => (done = true) });
      flush();
    });
    await vi.waitFor(() => expect(done).toBe(true));
    expect(mailer.deadLetters.map((letter) => letter.id)).toEqual(['1', '2']);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('handles a batch in one call, its rows held together, and acknowledges the batch as a whole', () => {
    const scheduler = newScheduler();
    const mailer = consumer(scheduler);
    const sizes: number[] = [];
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('(abcd|)', { a: a1, b: b1, c: a2, d: b2 });
      const handler = (batch: readonly Change<unknown>[]) => {
        sizes.push(batch.length);
        return timer(2);
      };
      expectObservable(source.pipe(mailer.delivered(), batchChanges({ size: 2 }), processChanges(handler, { concurrency: 2 }), map((batch) => batch.length))).toBe(
        '--x-(y|)',
        { x: 2, y: 2 },
      );
    });
    // The second batch (a2, b2) shares rows with the first: it waits for it.
    expect(sizes).toEqual([2, 2]);
    expect(mailer.ledger.inFlight).toBe(0);
  });

  it('refuses a concurrency or attempts below 1', () => {
    expect(() => processChanges(() => undefined, { concurrency: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    expect(() => processChanges(() => undefined, { attempts: 0.5 })).toThrow(expect.objectContaining({ code: 'INVALID_OPTIONS' }));
    expect(() => processChanges(() => undefined, { onExhausted: 'drop' as 'stop' })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTIONS' }),
    );
  });
});
