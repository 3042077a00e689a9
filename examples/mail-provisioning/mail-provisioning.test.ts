import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Subscription } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/connect.js';
import type { Change } from '../../src/types.js';
import { createTestDatabase, eventually, type TestDatabase } from '../../test/helpers.js';
import { applyChange, isSafe, MAIL_USERS_DDL, maildirsize, provisioning, type Apply, type MailUser } from './provisioner.js';

/** Every directory (trailing `/`) and file (`path = content`) under `root`, sorted. */
function treeOf(root: string): string[] {
  const entries: string[] = [];
  const walk = (directory: string): void => {
    for (const name of readdirSync(directory)) {
      const path = join(directory, name);
      const rel = relative(root, path);
      if (statSync(path).isDirectory()) {
        entries.push(`${rel}/`);
        walk(path);
      } else {
        entries.push(`${rel} = ${readFileSync(path, 'utf8')}`);
      }
    }
  };
  walk(root);
  return entries.sort();
}

/** The tree the table calls for, plus mail files known to have been delivered. */
function expectedTree(rows: readonly MailUser[], mail: Readonly<Record<string, string>> = {}): string[] {
  const entries = new Set<string>();
  for (const user of rows.filter(isSafe)) {
    const home = `${user.gid}/${user.username}`;
    entries.add(`${user.gid}/`);
    for (const path of [home, `${home}/Maildir`, `${home}/Maildir/cur`, `${home}/Maildir/new`, `${home}/Maildir/tmp`]) entries.add(`${path}/`);
    entries.add(`${home}/maildirsize = ${maildirsize(user)}`);
  }
  for (const [path, content] of Object.entries(mail)) entries.add(`${path} = ${content}`);
  return [...entries].sort();
}

describe('mail-provisioning example', () => {
  let db: TestDatabase;
  const roots: string[] = [];
  const newRoot = () => {
    const root = mkdtempSync(join(tmpdir(), 'pgtide-mail-'));
    roots.push(root);
    return root;
  };
  const rows = async () =>
    (await db.pool.query<MailUser>('SELECT id, gid, username, quota_bytes::float8 AS quota_bytes FROM mail_users ORDER BY id')).rows;
  const converged = async (root: string, mail: Record<string, string> = {}) => {
    const want = expectedTree(await rows(), mail);
    await eventually(() => JSON.stringify(treeOf(root)) === JSON.stringify(want), 'the filesystem to match mail_users');
    expect(treeOf(root)).toEqual(want);
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(MAIL_USERS_DDL);
    // Capture from the first row on: the log then holds the table's whole history.
    const setup = await db.tide();
    await setup.watch('mail_users');
  });
  afterAll(async () => {
    await db.drop();
    for (const root of roots) rmSync(root, { recursive: true, force: true });
  });

  function run(tide: Tide, root: string, options: { consumer?: string; apply?: Apply; warn?: (message: string) => void } = {}): Subscription {
    return provisioning(tide, { root, ...options }).subscribe({
      error: (error: unknown) => {
        throw error;
      },
    });
  }

  it('builds homes on insert, rewrites the quota file on quota_bytes change, and converges after a stop', async () => {
    const root = newRoot();
    const applied: Change<MailUser>[] = [];
    const counting: Apply = async (dir, change, warn) => {
      applied.push(change);
      await applyChange(dir, change, warn);
    };
    const first = await db.tide({ acknowledgeFlushDelay: 10 });
    run(first, root, { apply: counting });

    await db.pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1000, 'ann', 1000000000), (1000, 'bob', 500000000), (2000, 'cy', 100000000)`);
    await converged(root);
    expect(readFileSync(join(root, '1000/ann/maildirsize'), 'utf8')).toBe('1000000000S\n');

    // Mail arrives in ann's Maildir; it must survive everything below.
    writeFileSync(join(root, '1000/ann/Maildir/new/1.msg'), 'Subject: hello\n');
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 2000000000 WHERE username = 'ann'`);
    await converged(root, { '1000/ann/Maildir/new/1.msg': 'Subject: hello\n' });
    expect(readFileSync(join(root, '1000/ann/maildirsize'), 'utf8')).toBe('2000000000S\n');

    // A column provisioning does not use, and an update that changes nothing: neither is
    // delivered. Changes arrive in order, so once the quota change after them is applied,
    // they would have been too.
    const mark = applied.length;
    await db.pool.query(`UPDATE mail_users SET last_login = now()`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = quota_bytes WHERE username = 'cy'`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 100000001 WHERE username = 'cy'`);
    await eventually(() => applied.length > mark, 'the quota change');
    await converged(root, { '1000/ann/Maildir/new/1.msg': 'Subject: hello\n' });
    expect(applied.slice(mark).map((change) => `${change.op} ${change.new!.username} ${change.changed.join(',')}`)).toEqual(['update cy quota_bytes']);
    const before = applied.length;

    // Stop (positions are saved), then change the table while nobody provisions.
    await first.close();
    const stoppedTree = treeOf(root);
    await db.pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (2000, 'dan', 300000000)`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 700000000 WHERE username = 'bob'`);
    await db.pool.query(`UPDATE mail_users SET username = 'anne', gid = 3000 WHERE username = 'ann'`);
    await db.pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (2000, 'eve', 1)`);
    await db.pool.query(`DELETE FROM mail_users WHERE username = 'eve'`);
    await db.pool.query(`DELETE FROM mail_users WHERE username = 'cy'`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(treeOf(root)).toEqual(stoppedTree);

    // Start again: the backlog is applied in order and the tree matches the table.
    const second = await db.tide({ acknowledgeFlushDelay: 10 });
    run(second, root, { apply: counting });
    await converged(root, { '3000/anne/Maildir/new/1.msg': 'Subject: hello\n' });
    expect(existsSync(join(root, '1000/ann'))).toBe(false);
    expect(existsSync(join(root, '2000/cy'))).toBe(false);
    expect(readFileSync(join(root, '1000/bob/maildirsize'), 'utf8')).toBe('700000000S\n');
    // Only what happened while stopped was delivered again: insert dan, bob's quota, ann's move, eve in and out, cy out.
    expect(applied.slice(before).map((change) => `${change.op} ${(change.new ?? change.old)!.username}`)).toEqual([
      'insert dan',
      'update bob',
      'update anne',
      'insert eve',
      'delete eve',
      'delete cy',
    ]);
    await eventually(async () => (await second.consumers()).some((c) => c.name === 'mail-provisioning' && c.lagChanges === 0), 'the consumer to acknowledge everything');
    await second.close();
  });

  it('acknowledges a change only after its filesystem work; a crash in the middle is repaired on restart', async () => {
    const root = newRoot();
    let crashed = false;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let blocked: Change<MailUser> | undefined;
    const seen: string[] = [];
    // Holds the work on frank's quota change; once "crashed", the held work never happens.
    const gated: Apply = async (dir, change, warn) => {
      seen.push(change.id);
      if (change.op === 'update' && change.new?.username === 'frank' && blocked === undefined) {
        blocked = change;
        await released;
        if (crashed) return;
      }
      await applyChange(dir, change, warn);
    };
    const tide = await db.tide({ acknowledgeFlushDelay: 10 });
    // A new consumer starts at the beginning of the log: the whole history is applied.
    run(tide, root, { consumer: 'mail-crash', apply: gated });
    await db.pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1000, 'frank', 10)`);
    const insertId = (await db.pool.query<{ id: string }>(`SELECT max(id)::text AS id FROM pgtide.log`)).rows[0]!.id;
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 20 WHERE username = 'frank'`);
    await eventually(() => blocked !== undefined, 'the quota change to reach the filesystem step');

    // Everything before it is acknowledged; it is not, while its work is unfinished.
    const position = async () => (await tide.consumers()).find((consumer) => consumer.name === 'mail-crash')!;
    await eventually(async () => (await position()).acknowledgedId === insertId, 'the insert to be acknowledged');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect((await position()).acknowledgedId).toBe(insertId);
    expect((await position()).lagChanges).toBe(1);
    expect(readFileSync(join(root, '1000/frank/maildirsize'), 'utf8')).toBe('10S\n');

    // Crash in the middle of the work: nothing more is saved, the work never finishes.
    crashed = true;
    await tide.terminate();
    release();

    const restarted = await db.tide({ acknowledgeFlushDelay: 10 });
    run(restarted, root, { consumer: 'mail-crash', apply: gated });
    // The interrupted change is delivered again (at-least-once); nothing before it is.
    await eventually(() => seen.filter((id) => id === blocked!.id).length === 2, 'the quota change to be delivered again');
    expect(seen.filter((id) => id === insertId)).toHaveLength(1);
    // This root never received mail: the table alone decides the tree.
    await converged(root);
    expect(readFileSync(join(root, '1000/frank/maildirsize'), 'utf8')).toBe('20S\n');
    await restarted.close();
  });

  it('refuses a username that is not a plain directory name, and provisions it once renamed', async () => {
    const root = newRoot();
    const warnings: string[] = [];
    const tide = await db.tide({ acknowledgeFlushDelay: 10 });
    run(tide, root, { consumer: 'mail-safety', warn: (message) => warnings.push(message) });
    await db.pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1000, '../../escape', 1)`);
    await converged(root);
    await eventually(() => warnings.length === 1, 'a warning');
    expect(warnings[0]).toBe('mail-provisioning: skipping insert of user "../../escape" (gid 1000): not a plain directory name');
    expect(existsSync(join(root, '..', 'escape'))).toBe(false);

    await db.pool.query(`UPDATE mail_users SET username = 'escaped' WHERE username = '../../escape'`);
    await converged(root);
    expect(existsSync(join(root, '1000/escaped/Maildir/new'))).toBe(true);
    await tide.close();
  });
});
