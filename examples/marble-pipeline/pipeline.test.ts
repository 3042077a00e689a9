import type { Observable } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
// In an application: from 'pgtide/testing'.
import { createTestTide, insert, resetChangeIds, update } from '../../src/testing/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../../test/helpers.js';
import { quotaMails, type QuotaMail, type QuotaUser } from './pipeline.js';

const ann = { id: 1, email: 'ann@example.org', active: true };
const bob = { id: 2, email: 'bob@example.org', active: true };
const cy = { id: 3, email: 'cy@example.org', active: true };
const dan = { id: 4, email: 'dan@example.org', active: false };

/** The story both marble tests replay. Frame numbers are the marble columns. */
function story() {
  resetChangeIds();
  return {
    a: update<QuotaUser>('mail_users', { ...ann, quota_bytes: 200 }, { ...ann, quota_bytes: 100 }), // ann's quota ...
    b: update<QuotaUser>('mail_users', { ...ann, quota_bytes: 300 }, { ...ann, quota_bytes: 200 }), // ... edited again: one mail
    c: update<QuotaUser>('mail_users', { ...bob, quota_bytes: 20 }, { ...bob, quota_bytes: 10 }),
    d: update<QuotaUser>('mail_users', { ...cy, email: 'cyril@example.org', quota_bytes: 5 }, { ...cy, quota_bytes: 5 }), // no quota change
    e: update<QuotaUser>('mail_users', { ...dan, quota_bytes: 9 }, { ...dan, quota_bytes: 1 }), // inactive user
    f: insert<QuotaUser>('mail_users', { id: 5, email: 'eve@example.org', active: true, quota_bytes: 1 }), // not an update
    g: update<QuotaUser>('mail_users', { ...bob, quota_bytes: 30 }, { ...bob, quota_bytes: 20 }),
  };
}

describe('quota mails, marble-tested with pgtide/testing', () => {
  let testScheduler: TestScheduler;
  beforeEach(() => {
    testScheduler = new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
  });

  it('mails once per burst, in batches, and acknowledges what the mail API accepted', () => {
    const testTide = createTestTide(testScheduler);
    const { a, b, c, d, e, f, g } = story();
    const sent: Array<{ frame: number; mails: readonly QuotaMail[] }> = [];

    testScheduler.run(({ hot, cold, expectObservable }) => {
      // frame:                        0         1         2
      //                               01234567890123456789012345
      testTide.source('mail_users', hot('-a-bcdef-------g----------', { a, b, c, d, e, f, g }));
      const batches = quotaMails(testTide, {
        quietMs: 3, // a..b..: ann's second edit restarts her 3-frame timer; b leaves at 6, c at 7
        batchSize: 2, // [b, c] is full at 7
        batchMs: 5, // [g] leaves 5 frames after g left the debounce (18 + 5)
        send: (mails) => {
          sent.push({ frame: testScheduler.now(), mails });
          return cold('--(r|)'); // the mail API takes 2 frames
        },
      });
      expectObservable(batches).toBe('---------x---------------y', { x: [b, c], y: [g] });
    });

    expect(sent).toEqual([
      { frame: 7, mails: [{ to: 'ann@example.org', quotaBytes: 300 }, { to: 'bob@example.org', quotaBytes: 20 }] },
      { frame: 23, mails: [{ to: 'bob@example.org', quotaBytes: 30 }] },
    ]);
    // Delivery order a b c d e f g. d, e, f are dropped at once but wait behind a, which
    // waits for b (it superseded a), which waits for the mail API: at 9, b covers a and b,
    // then c covers c and the dropped d, e, f. g is done when its batch is sent, at 25.
    expect(testTide.acknowledged('quota-mailer')).toEqual([
      { id: b.id, frame: 9 },
      { id: f.id, frame: 9 },
      { id: g.id, frame: 25 },
    ]);
  });

  it('a failed send stops the stream and leaves its batch unacknowledged, to be mailed again after a restart', () => {
    const testTide = createTestTide(testScheduler);
    const { a, b, c, d, e, f, g } = story();
    const failure = new Error('mail API unavailable');

    testScheduler.run(({ hot, cold, expectObservable }) => {
      testTide.source('mail_users', hot('-a-bcdef-------g----------', { a, b, c, d, e, f, g }));
      let calls = 0;
      const batches = quotaMails(testTide, {
        quietMs: 3,
        batchSize: 2,
        batchMs: 5,
        send: () => (++calls === 1 ? cold('--(r|)') : cold('--#', undefined, failure)),
      });
      expectObservable(batches).toBe('---------x---------------#', { x: [b, c] }, failure);
    });

    expect(testTide.acknowledged('quota-mailer')).toEqual([
      { id: b.id, frame: 9 },
      { id: f.id, frame: 9 },
    ]);
    expect(testTide.processedId('quota-mailer')).toBe(f.id);
  });
});

describe('quota mails on a real database', () => {
  let db: TestDatabase;
  afterAll(async () => {
    await db?.drop();
  });

  it('runs unchanged against a Tide', async () => {
    db = await createTestDatabase();
    await db.pool.query(`
      CREATE TABLE mail_users (id int PRIMARY KEY, email text NOT NULL, active boolean NOT NULL, quota_bytes int NOT NULL, last_login timestamptz);
      INSERT INTO mail_users VALUES (1, 'ann@example.org', true, 100), (2, 'bob@example.org', true, 10), (3, 'dan@example.org', false, 1);`);
    const tide = await db.tide({ acknowledgeFlushDelay: 10 });
    const sent: QuotaMail[][] = [];
    const batches: Observable<unknown> = quotaMails(tide, {
      quietMs: 100,
      batchSize: 10,
      batchMs: 100,
      send: async (mails) => {
        sent.push([...mails]);
      },
    });
    const subscription = batches.subscribe();
    // The consumer is registered on first use, at 'now': wait for it, then write.
    await eventually(async () => (await tide.consumers()).some((consumer) => consumer.name === 'quota-mailer'), 'the consumer to register');
    // Two edits of ann's quota in one transaction: delivered together, mailed once.
    await db.pool.query(`BEGIN; UPDATE mail_users SET quota_bytes = 200 WHERE id = 1; UPDATE mail_users SET quota_bytes = 300 WHERE id = 1; COMMIT`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 20 WHERE id = 2`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 5 WHERE id = 3`); // inactive
    await db.pool.query(`UPDATE mail_users SET last_login = now()`); // not a column it follows

    await eventually(() => sent.flat().length === 2, 'two mails');
    expect(sent.flat()).toEqual([
      { to: 'ann@example.org', quotaBytes: 300 },
      { to: 'bob@example.org', quotaBytes: 20 },
    ]);
    await eventually(
      async () => (await tide.consumers()).find((consumer) => consumer.name === 'quota-mailer')?.lagChanges === 0,
      'every change to be acknowledged',
    );
    subscription.unsubscribe();
  });
});
