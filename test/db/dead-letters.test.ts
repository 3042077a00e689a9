import { throwError } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processChanges } from '../../operators/processChanges.js';
import type { Change, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  tide = await db.tide({ pruneInterval: 0, acknowledgeFlushDelay: 10 });
  await db.pool.query('CREATE TABLE orders (id int8 PRIMARY KEY, amount numeric NOT NULL)');
  await tide.watch('orders');
});

afterAll(async () => {
  await db.drop();
});

/** Runs a consumer whose handler fails for the orders `failing` says; returns what it handled and a stop function. */
function runConsumer(consumer: string, failing: (change: Change) => boolean) {
  const handled: string[] = [];
  let failure: unknown;
  const subscription = tide
    .changes$('orders', { consumer, from: 'beginning' })
    .pipe(
      processChanges(
        (change) => {
          handled.push(`${String(change.key['id'])}:${change.op}`);
          return failing(change) ? throwError(() => new Error(`declined ${String(change.key['id'])}`)) : Promise.resolve();
        },
        { attempts: 2, backoff: () => 5 },
      ),
    )
    .subscribe({ error: (error: unknown) => (failure = error) });
  return { handled, failure: () => failure, stop: () => subscription.unsubscribe() };
}

async function lagOf(consumer: string): Promise<number | undefined> {
  return (await tide.consumers()).find((info) => info.name === consumer)?.lagChanges;
}

describe('dead letters', () => {
  it('keep a change its handler gave up on, with the error and attempts, while its row and the consumer go on', async () => {
    const run = runConsumer('billing', (change) => change.key['id'] === '2' && change.op === 'insert');
    await db.pool.query('INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30)');
    await db.pool.query('UPDATE orders SET amount = 21 WHERE id = 2');
    await eventually(async () => (await lagOf('billing')) === 0, 'billing acknowledged everything');
    expect(run.failure()).toBeUndefined();
    // id 2's insert was tried twice, then its update went on.
    expect(run.handled).toEqual(['1:insert', '2:insert', '2:insert', '3:insert', '2:update']);
    const letters = await tide.deadLetters('billing');
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({ consumer: 'billing', error: 'declined 2', attempts: 2, retryRequestedAt: null });
    expect(letters[0]!.change).toMatchObject({ op: 'insert', table: 'orders', key: { id: '2' }, new: { id: '2', amount: '20' } });
    run.stop();
  });

  it('keep their changes through prune, which deletes everything else the consumers are past', async () => {
    const [letter] = await tide.deadLetters('billing');
    await tide.prune();
    const { rows } = await db.pool.query<{ id: string }>('SELECT id::text FROM pgtide.log ORDER BY id');
    expect(rows.map((row) => row.id)).toEqual([letter!.change.id]);
    expect((await tide.deadLetters('billing'))[0]!.change).toEqual(letter!.change);
  });

  it('are delivered again on retry, to the running consumer, and removed once processed', async () => {
    const run = runConsumer('billing', () => false);
    expect(await tide.retryDeadLetters('billing')).toBe(1);
    await eventually(async () => (await tide.deadLetters('billing')).length === 0, 'the dead letter was processed and removed');
    expect(run.handled).toEqual(['2:insert']);
    await tide.prune();
    const { rows } = await db.pool.query('SELECT id FROM pgtide.log');
    expect(rows).toEqual([]);
    run.stop();
  });

  it('retried and failing again are kept again with the attempts added; a consumer started later picks up a pending retry', async () => {
    let run = runConsumer('shipping', (change) => change.key['id'] === '4');
    await db.pool.query('INSERT INTO orders VALUES (4, 40)');
    await eventually(async () => (await tide.deadLetters('shipping')).length === 1, 'a dead letter');
    run.stop();
    await eventually(async () => (await lagOf('shipping')) === 0, 'shipping saved its position');
    // No stream runs: the retry waits for the next one.
    expect(await tide.retryDeadLetters('shipping')).toBe(1);
    run = runConsumer('shipping', (change) => change.key['id'] === '4');
    await eventually(async () => (await tide.deadLetters('shipping'))[0]?.attempts === 4, 'retried and failed again');
    const [again] = await tide.deadLetters('shipping');
    expect(again).toMatchObject({ error: 'declined 4', retryRequestedAt: null });
    expect(run.handled).toEqual(['4:insert', '4:insert']);
    run.stop();
  });

  it('are retried by id and dropped by id or all at once', async () => {
    const run = runConsumer('audit', (change) => Number(change.key['id']) >= 5);
    await db.pool.query('INSERT INTO orders VALUES (5, 50), (6, 60), (7, 70)');
    await eventually(async () => (await tide.deadLetters('audit')).length === 3, 'three dead letters');
    run.stop();
    const letters = await tide.deadLetters('audit');
    expect(await tide.retryDeadLetters('audit', [letters[0]!.id])).toBe(1);
    expect(await tide.dropDeadLetters('audit', [letters[1]!.id])).toBe(1);
    const left = await tide.deadLetters('audit');
    expect(left.map((letter) => letter.id)).toEqual([letters[0]!.id, letters[2]!.id]);
    expect(left[0]!.retryRequestedAt).toBeInstanceOf(Date);
    expect(await tide.dropDeadLetters('audit')).toBe(2);
    expect(await tide.deadLetters('audit')).toEqual([]);
    expect(await tide.retryDeadLetters('nobody')).toBe(0);
  });

  it('refuse bad names and ids with INVALID_OPTIONS', async () => {
    await expect(tide.deadLetters('')).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
    await expect(tide.retryDeadLetters('billing', ['x1'])).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
    await expect(tide.dropDeadLetters('billing', [1 as unknown as string])).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
  });

  it('a stream without a consumer has none: the pipeline errors with PROCESSING_FAILED', async () => {
    let failure: unknown;
    const subscription = tide
      .changes$('orders')
      .pipe(processChanges(() => throwError(() => new Error('no')), { attempts: 1 }))
      .subscribe({ error: (error: unknown) => (failure = error) });
    await new Promise((resolve) => setTimeout(resolve, 100));
    await db.pool.query('INSERT INTO orders VALUES (8, 80)');
    await eventually(() => failure !== undefined, 'the stream errored');
    expect(failure).toMatchObject({ code: 'PROCESSING_FAILED' });
    expect((failure as Error).message).toContain('no durable consumer');
    subscription.unsubscribe();
  });
});
