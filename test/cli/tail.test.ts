import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROGRESS_MIN_BACKLOG } from '../../src/cli/tail.js';
import { createTestDatabase, type TestDatabase } from '../helpers.js';
import { canFakeTerminal, oneLine, runCli, runCliInTerminal, startCli } from './run.js';

const CAUGHT_UP = /pgtide: caught up after replaying \d+ changes?; following \S+ \(Ctrl-C to stop\)\n/;
const ISO = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';

describe('pgtide tail', () => {
  let db: TestDatabase;
  let scratch: string;
  const cli = (...args: string[]) => runCli(['--url', db.url, ...args]);

  beforeAll(async () => {
    db = await createTestDatabase();
    scratch = mkdtempSync(join(tmpdir(), 'pgtide-tail-'));
    await db.pool.query(`
      CREATE TABLE mail_users (id int PRIMARY KEY, gid int NOT NULL, username text NOT NULL, quota_bytes bigint NOT NULL);
      CREATE TABLE members (org text, member int, role text, PRIMARY KEY (org, member));
      CREATE TABLE backlog (id int PRIMARY KEY, hits int NOT NULL);`);
    expect((await cli('install')).code).toBe(0);
  });
  afterAll(async () => {
    rmSync(scratch, { recursive: true, force: true });
    await db.drop();
  });

  it('follows live changes as NDJSON until Ctrl-C, then exits 0', async () => {
    const tail = startCli(['--url', db.url, 'tail', 'mail_users', '--json']);
    await tail.waitForStderr(CAUGHT_UP);
    await db.pool.query(`INSERT INTO mail_users VALUES (1, 1000, 'ann', 100)`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 200 WHERE id = 1`);
    await db.pool.query(`DELETE FROM mail_users WHERE id = 1`);
    const lines = await tail.waitForLines(3);
    tail.child.kill('SIGINT');
    const result = await tail.exited;
    expect(result.code).toBe(0);
    const changes = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(changes).toEqual([
      expect.objectContaining({ op: 'insert', schema: 'public', table: 'mail_users', key: { id: 1 }, new: { id: 1, gid: 1000, username: 'ann', quota_bytes: '100' } }),
      expect.objectContaining({ op: 'update', key: { id: 1 }, changed: ['quota_bytes'], old: expect.objectContaining({ quota_bytes: '100' }), new: expect.objectContaining({ quota_bytes: '200' }) }),
      expect.objectContaining({ op: 'delete', key: { id: 1 }, old: { id: 1, gid: 1000, username: 'ann', quota_bytes: '200' } }),
    ]);
    for (const change of changes) {
      expect(change.id).toMatch(/^\d+$/);
      expect(change.committedAt).toMatch(new RegExp(`^${ISO}$`));
    }
    expect(result.stderr).toMatch(/^pgtide: caught up after replaying 0 changes; following mail_users \(Ctrl-C to stop\)\n$/);
  });

  it('prints op, key and changed columns as old -> new, replaying from the beginning', async () => {
    await db.pool.query(`INSERT INTO mail_users VALUES (2, 1000, 'bob', 500)`);
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 900, username = 'bobby' WHERE id = 2`);
    const result = await cli('tail', 'mail_users', '--from', 'beginning', '--limit', '5');
    expect(result.code).toBe(0);
    const lines = result.stdout.split('\n');
    expect(lines.pop()).toBe('');
    const patterns = [
      // quota_bytes is a bigint: pg gives it as a string, and the CLI prints what streams get.
      `insert id=1  gid=1000 username="ann" quota_bytes="100"`,
      `update id=1  quota_bytes: "100" -> "200"`,
      `delete id=1  gid=1000 username="ann" quota_bytes="200"`,
      `insert id=2  gid=1000 username="bob" quota_bytes="500"`,
      `update id=2  username: "bob" -> "bobby", quota_bytes: "500" -> "900"`,
    ];
    expect(lines).toHaveLength(patterns.length);
    lines.forEach((line, index) => expect(line).toMatch(new RegExp(`^#\\d+ ${ISO} ${escape(patterns[index]!)}$`)));
  });

  it('--from <id> starts after that change', async () => {
    const all = (await cli('tail', 'mail_users', '--from', 'beginning', '--json', '--limit', '5')).stdout.trim().split('\n');
    const third = JSON.parse(all[2]!) as { id: string };
    const result = await cli('tail', 'mail_users', '--from', third.id, '--json', '--limit', '2');
    expect(result.stdout.trim().split('\n')).toEqual(all.slice(3, 5));
  });

  it('--columns keeps inserts, deletes and updates of those columns; --row-id keeps one row', async () => {
    await db.pool.query(`INSERT INTO mail_users VALUES (3, 1000, 'cy', 1), (4, 1000, 'di', 1)`);
    await db.pool.query(`UPDATE mail_users SET username = 'cyril' WHERE id = 3`); // not a watched column: skipped
    await db.pool.query(`UPDATE mail_users SET quota_bytes = quota_bytes + 1`); // both rows; only row 3 passes --row-id
    await db.pool.query(`DELETE FROM mail_users WHERE id = 3`);
    const tail = startCli(['--url', db.url, 'tail', 'mail_users', '--from', 'beginning', '--columns', 'quota_bytes', '--row-id', '3']);
    const lines = await tail.waitForLines(3);
    await tail.waitForStderr(CAUGHT_UP);
    tail.child.kill('SIGTERM');
    expect((await tail.exited).code).toBe(0);
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(new RegExp(`^#\\d+ ${ISO} insert id=3  quota_bytes="1"$`));
    expect(lines[1]).toMatch(new RegExp(`^#\\d+ ${ISO} update id=3  quota_bytes: "1" -> "2"$`));
    expect(lines[2]).toMatch(new RegExp(`^#\\d+ ${ISO} delete id=3  quota_bytes="2"$`));
  });

  it('--row-id takes a JSON object for a composite key', async () => {
    expect((await cli('watch', 'members')).code).toBe(0);
    await db.pool.query(`INSERT INTO members VALUES ('acme', 1, 'admin'), ('acme', 2, 'user')`);
    await db.pool.query(`UPDATE members SET role = 'owner' WHERE member = 2`);
    const result = await cli('tail', 'members', '--from', 'beginning', '--row-id', '{"org":"acme","member":2}', '--limit', '2');
    expect(result.code).toBe(0);
    const lines = result.stdout.trim().split('\n');
    expect(lines[0]).toMatch(new RegExp(`^#\\d+ ${ISO} insert org="acme" member=2  role="user"$`));
    expect(lines[1]).toMatch(new RegExp(`^#\\d+ ${ISO} update org="acme" member=2  role: "user" -> "owner"$`));
  });

  it('--consumer resumes after what it printed before', async () => {
    const first = await cli('tail', 'mail_users', '--consumer', 'printer', '--from', 'beginning', '--json', '--limit', '3');
    expect(first.code).toBe(0);
    const firstIds = first.stdout.trim().split('\n').map((line) => (JSON.parse(line) as { id: string }).id);
    const { rows } = await db.pool.query<{ id: string }>(
      `SELECT l.id::text FROM pgtide.log l WHERE l.relid = 'mail_users'::regclass ORDER BY l.id`,
    );
    expect(firstIds).toEqual(rows.slice(0, 3).map((row) => row.id));

    const status = JSON.parse((await cli('status', '--json')).stdout) as { consumers: Array<{ name: string; acknowledgedId: string; lagChanges: number }> };
    expect(status.consumers).toEqual([expect.objectContaining({ name: 'printer', acknowledgedId: firstIds[2], lagChanges: rows.length - 3 })]);

    const second = await cli('tail', 'mail_users', '--consumer', 'printer', '--json', '--limit', '2');
    const secondIds = second.stdout.trim().split('\n').map((line) => (JSON.parse(line) as { id: string }).id);
    expect(secondIds).toEqual(rows.slice(3, 5).map((row) => row.id));
  });

  it('an unknown table fails in one line, exit code 1, nothing printed', async () => {
    const result = await cli('tail', 'nope', '--json');
    expect(result.code).toBe(1);
    expect(oneLine(result.stderr)).toBe('pgtide: table "nope" does not exist (or is not on the search_path) [UNKNOWN_TABLE]');
    expect(result.stdout).toBe('');
  });

  it('ends quietly with exit code 0 when its output is closed (pgtide tail t | head)', async () => {
    await db.pool.query(`INSERT INTO backlog SELECT g, g FROM generate_series(1, ${PROGRESS_MIN_BACKLOG + 1000}) g`);
    // Capture the backlog: watch first, then write it again so it is logged.
    expect((await cli('watch', 'backlog')).code).toBe(0);
    await db.pool.query(`UPDATE backlog SET hits = hits + 1`);
    const tail = startCli(['--url', db.url, 'tail', 'backlog', '--from', 'beginning', '--json']);
    await tail.waitForLines(1);
    tail.child.stdout.destroy();
    // Should the whole backlog already be written, a live change makes it write again.
    await db.pool.query(`UPDATE backlog SET hits = hits + 1 WHERE id = 1`);
    const result = await tail.exited;
    expect(result.code).toBe(0);
    expect(result.stderr).not.toMatch(/cannot write|error/i);
  });

  describe('progress while replaying a long backlog', () => {
    let total = 0;
    beforeAll(async () => {
      const { rows } = await db.pool.query<{ count: number }>(`SELECT count(*)::int AS count FROM pgtide.log WHERE relid = 'backlog'::regclass`);
      total = rows[0]!.count;
      expect(total).toBeGreaterThan(PROGRESS_MIN_BACKLOG);
    });

    it('shows none when stderr is not a terminal', async () => {
      const result = await cli('tail', 'backlog', '--from', 'beginning', '--json', '--limit', String(total));
      expect(result.code).toBe(0);
      expect(result.stdout.trim().split('\n')).toHaveLength(total);
      expect(result.stderr).toBe('');
    });

    it.skipIf(!canFakeTerminal)('shows a bar on a terminal stderr while the changes go to a file', async () => {
      const output = join(scratch, 'changes.ndjson');
      const result = await runCliInTerminal(`--url '${db.url}' tail backlog --from beginning --json --limit ${total} > '${output}'`);
      expect(result.code).toBe(0);
      expect(readFileSync(output, 'utf8').trim().split('\n')).toHaveLength(total);
      const screen = result.stdout;
      expect(screen).toMatch(new RegExp(`replaying [█░]+ \\d+/${total} changes`));
      expect(screen).toContain(`replaying ${'█'.repeat(40)} ${total}/${total} changes 100%`);
    });

    it.skipIf(!canFakeTerminal)('shows none with --no-progress, or when the backlog is short', async () => {
      const output = join(scratch, 'quiet.ndjson');
      const off = await runCliInTerminal(`--url '${db.url}' tail backlog --from beginning --json --no-progress --limit ${total} > '${output}'`);
      expect(off.code).toBe(0);
      expect(off.stdout).not.toContain('replaying');
      const short = await runCliInTerminal(`--url '${db.url}' tail mail_users --from beginning --json --limit 3 > '${output}'`);
      expect(short.code).toBe(0);
      expect(readFileSync(output, 'utf8').trim().split('\n')).toHaveLength(3);
      expect(short.stdout).not.toContain('replaying');
    });
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
