import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Tide } from '../../src/index.js';
import { createTestDatabase, type TestDatabase } from '../../test/helpers.js';
import { CHROMIUM, CHROMIUM_ARGS } from './chromium.js';
import { createLiveTableServer, type LiveTableOptions, type LiveTableServer } from './server.js';

/** How long the page may take to show a committed change. NOTIFY makes it milliseconds; polling bounds it at 1 s. */
const FOLLOW_WITHIN_MS = 5_000;
/** Screenshots go here (gitignored). */
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));

if (!existsSync(CHROMIUM)) console.warn(`live-table browser test skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);

describe.skipIf(!existsSync(CHROMIUM))('live-table example in headless Chromium', () => {
  let db: TestDatabase;
  let tide: Tide;
  let live: LiveTableServer;
  let url: string;
  let userDataDir: string;
  let browser: BrowserContext;
  let page: Page;

  /** The rows the page shows, as cell texts. */
  const shown = (target: Page = page) =>
    target.$$eval('tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)));
  /** The table's rows as the page should show them, in key order. */
  const expected = async () =>
    (await db.pool.query<{ id: number; username: string; quota_bytes: string }>('SELECT id, username, quota_bytes FROM mail_users ORDER BY id')).rows.map(
      (row) => [String(row.id), row.username, row.quota_bytes],
    );
  const pageFollows = async (target: Page = page) => {
    const want = await expected();
    await expect.poll(() => shown(target), { timeout: FOLLOW_WITHIN_MS, interval: 25 }).toEqual(want);
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(`
      CREATE TABLE mail_users (id int PRIMARY KEY, username text NOT NULL, quota_bytes bigint NOT NULL, last_login timestamptz);
      INSERT INTO mail_users VALUES (1, 'ann', 1000), (2, 'bob', 500);`);
    tide = await db.tide();
    live = createLiveTableServer(serverOptions());
    url = await live.listen();
    userDataDir = mkdtempSync(join(tmpdir(), 'pgtide-chromium-'));
    browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 60_000,
    });
    page = browser.pages()[0] ?? (await browser.newPage());
  });

  /** The example server as this test runs it: pages with `?user=<name>` see only rows of that username. */
  const serverOptions = (): LiveTableOptions => ({
      tide,
      table: 'mail_users',
      columns: ['id', 'username', 'quota_bytes'],
      title: 'Mail users',
      authorize: (request) => {
        const user = new URL(request.url ?? '/', 'http://x').searchParams.get('user');
        return user ? { rowFilter: (row) => row['username'] === user } : {};
      },
      write: async (row) => {
        const { rows } = await db.pool.query<{ txid: string }>(
          `WITH written AS (
             INSERT INTO mail_users (id, username, quota_bytes) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET username = excluded.username, quota_bytes = excluded.quota_bytes)
           SELECT pg_current_xact_id()::text AS txid`,
          [row['id'], row['username'], row['quota_bytes']],
        );
        return rows[0]!.txid;
      },
  });
  afterAll(async () => {
    await browser?.close();
    await live?.close();
    await db?.drop();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  });

  it('shows the snapshot, then follows inserts, updates and deletes made with SQL', async () => {
    await page.goto(url);
    await expect.poll(() => page.textContent('#status'), { timeout: FOLLOW_WITHIN_MS }).toBe('live');
    expect(await page.textContent('h1')).toBe('Mail users');
    expect(await page.$$eval('thead th', (ths) => ths.map((th) => th.textContent))).toEqual(['id', 'username', 'quota_bytes']);
    expect(await shown()).toEqual([
      ['1', 'ann', '1000'],
      ['2', 'bob', '500'],
    ]);

    await db.pool.query(`INSERT INTO mail_users VALUES (3, 'cy', 100)`);
    await pageFollows();
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 2000 WHERE id = 1`);
    await pageFollows();
    expect(await page.textContent('tr[data-key="1"] td[data-column="quota_bytes"]')).toBe('2000');
    await db.pool.query(`DELETE FROM mail_users WHERE id = 2`);
    await pageFollows();
    expect(await page.$('tr[data-key="2"]')).toBeNull();
    expect(await page.textContent('#count')).toBe('2');
  });

  it('keeps rows in key order and survives a burst of changes in one transaction', async () => {
    await db.pool.query(`
      BEGIN;
      INSERT INTO mail_users SELECT g, 'user' || g, g * 10 FROM generate_series(10, 109) g;
      UPDATE mail_users SET quota_bytes = quota_bytes + 1 WHERE id % 2 = 0;
      DELETE FROM mail_users WHERE id BETWEEN 50 AND 59;
      COMMIT;`);
    await pageFollows();
    expect(await page.textContent('#count')).toBe(String((await expected()).length));
  });

  it('sends nothing for updates of columns it does not show', async () => {
    // Rows that receive a delta are marked .changed (they flash): start with none marked.
    await page.$$eval('tr.changed', (trs) => trs.forEach((tr) => tr.classList.remove('changed')));
    await db.pool.query(`UPDATE mail_users SET last_login = now()`);
    // Deltas arrive in order: once this shown change is on the page, any delta for
    // last_login would have arrived before it.
    await db.pool.query(`UPDATE mail_users SET username = 'ann2' WHERE id = 1`);
    await pageFollows();
    expect(await page.$$eval('tr.changed', (trs) => trs.map((tr) => tr.getAttribute('data-key')))).toEqual(['1']);
  });

  it('shows values as text, never as markup', async () => {
    await db.pool.query(`INSERT INTO mail_users VALUES (4, '<img src=x onerror="document.title=''owned''">', 1)`);
    await pageFollows();
    expect(await page.textContent('tr[data-key="4"] td[data-column="username"]')).toBe(`<img src=x onerror="document.title='owned'">`);
    expect(await page.$('tbody img')).toBeNull();
    expect(await page.title()).toBe('Mail users');
  });

  it('gives a browser that arrives later the current rows, then the changes', async () => {
    const second = await browser.newPage();
    try {
      await second.goto(url);
      await expect.poll(() => second.textContent('#status'), { timeout: FOLLOW_WITHIN_MS }).toBe('live');
      await pageFollows(second);
      await db.pool.query(`UPDATE mail_users SET quota_bytes = 7 WHERE id = 3`);
      await pageFollows(second);
      await pageFollows(page);
    } finally {
      await second.close();
    }
  });

  it('confirms a write posted from the page only once the page can show it (read your writes)', async () => {
    const answer = await page.evaluate(async () => {
      const response = await fetch('/rows', { method: 'POST', body: JSON.stringify({ id: 5, username: 'eve', quota_bytes: 55 }) });
      return (await response.json()) as { txid: string; confirmed: boolean };
    });
    expect(answer).toMatchObject({ confirmed: true, txid: expect.stringMatching(/^\d+$/) });
    // The server's stream had it when it answered; the page gets it over the same open stream.
    await expect.poll(() => page.textContent('tr[data-key="5"] td[data-column="quota_bytes"]'), { timeout: 1000, interval: 10 }).toBe('55');
  });

  it('converges without a reload when the server restarts and when the network drops', async () => {
    const port = Number(new URL(url).port);
    // The server process goes away (its shared stream with it) and comes back on the same port.
    await live.close();
    await expect.poll(() => page.textContent('#status'), { timeout: FOLLOW_WITHIN_MS }).toBe('reconnecting');
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 11 WHERE id = 1`);
    await db.pool.query(`INSERT INTO mail_users VALUES (6, 'fay', 66)`);
    live = createLiveTableServer(serverOptions());
    await live.listen(port);
    await pageFollows();
    await expect.poll(() => page.textContent('#status'), { timeout: FOLLOW_WITHIN_MS }).toBe('live');
    // The browser goes offline (its stream cut), changes happen, it comes back.
    await browser.setOffline(true);
    live.server.closeAllConnections();
    await expect.poll(() => page.textContent('#status'), { timeout: FOLLOW_WITHIN_MS }).toBe('reconnecting');
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 12 WHERE id = 1`);
    await db.pool.query(`DELETE FROM mail_users WHERE id = 6`);
    await browser.setOffline(false);
    await pageFollows();
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 13 WHERE id = 1`);
    await pageFollows();
  });

  it('shows two browsers only the rows authorize lets each see', async () => {
    const ann = await browser.newPage();
    const bob = await browser.newPage();
    try {
      await ann.goto(`${url}?user=ann2`);
      await bob.goto(`${url}?user=eve`);
      const only = async (target: Page, username: string) => {
        const want = (await expected()).filter((row) => row[1] === username);
        await expect.poll(() => shown(target), { timeout: FOLLOW_WITHIN_MS, interval: 25 }).toEqual(want);
      };
      await only(ann, 'ann2');
      await only(bob, 'eve');
      // A row moves from one user to the other: it leaves one page and enters the other.
      await db.pool.query(`UPDATE mail_users SET username = 'eve' WHERE id = 1`);
      await only(ann, 'ann2');
      await only(bob, 'eve');
      expect(await shown(ann)).toEqual([]);
      expect((await shown(bob)).map((row) => row[0])).toEqual(['1', '5']);
      await pageFollows(page);
    } finally {
      await ann.close();
      await bob.close();
    }
  });

  it('saves a screenshot of the live page', async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const path = join(ARTIFACTS, 'live-table.png');
    rmSync(path, { force: true });
    await page.screenshot({ path, fullPage: true });
    expect(statSync(path).size).toBeGreaterThan(1_000);
  });
});
