import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import pg from 'pg';
import { firstValueFrom, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { processChanges } from '../../operators/processChanges.js';
import { latestVersion } from '../../src/migrate.js';
import { createTestDatabase, type TestDatabase } from '../helpers.js';
import { oneLine, runCli } from './run.js';

const packageJson = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

describe('pgtide command line', () => {
  it('--help lists every command and the exit codes', async () => {
    const result = await runCli(['--help']);
    expect(result.code).toBe(0);
    for (const command of ['install', 'watch', 'unwatch', 'tail', 'relay', 'repl', 'status', 'prune', 'consumers', 'dead-letters']) {
      expect(result.stdout).toMatch(new RegExp(`^  ${command}\\b`, 'm'));
    }
    expect(result.stdout).toContain('--url <url>');
    expect(result.stdout).toContain('Exit codes: 0 done, 1 failed');
  });

  it('without a command: the usage on stderr, exit code 2', async () => {
    const result = await runCli([]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^Usage: pgtide \[options\] \[command\]\n/);
    expect(result.stderr).not.toContain('(outputHelp)');
    expect(result.stdout).toBe('');
  });

  it('--version prints the package version', async () => {
    const result = await runCli(['--version']);
    expect(result).toMatchObject({ code: 0, stdout: `${packageJson.version}\n` });
  });

  it('without --url or DATABASE_URL: one line, exit code 2', async () => {
    const result = await runCli(['status']);
    expect(result.code).toBe(2);
    expect(oneLine(result.stderr)).toBe(
      'pgtide: no database given: pass --url postgres://user:password@host:port/database or set DATABASE_URL',
    );
    expect(result.stdout).toBe('');
  });

  it.each([
    [['bogus'], "pgtide: unknown command 'bogus' (see pgtide --help)"],
    [['status', '--bogus'], "pgtide: unknown option '--bogus' (see pgtide --help)"],
    [['watch'], "pgtide: missing required argument 'table' (see pgtide --help)"],
    [['tail', 't', '--from', 'yesterday'], /^pgtide: option '--from <position>' argument 'yesterday' is invalid\. expected 'now', 'beginning' or a change id\./],
    [['tail', 't', '--limit', '0'], /argument '0' is invalid\. expected a positive integer\./],
    [['tail', 't', '--row-id', '{"org":'], /argument '\{"org":' is invalid\. expected a key value, or a JSON object/],
    [['watch', 't', '--columns', 'a,,b'], /argument 'a,,b' is invalid\. expected column names separated by commas/],
    [['prune', '--retention', '5'], /argument '5' is invalid\. expected a number with a unit/],
    [['--url', 'not a url', 'status'], 'pgtide: invalid database URL: expected postgres://user:password@host:port/database'],
    [['--url', 'mysql://localhost/db', 'status'], 'pgtide: invalid database URL: the scheme must be postgres:// or postgresql://, not mysql://'],
  ])('bad arguments %j: one line, exit code 2', async (args, message) => {
    const result = await runCli(args, { env: { DATABASE_URL: 'postgres://unused@127.0.0.1:1/unused' } });
    expect(result.code).toBe(2);
    if (typeof message === 'string') expect(oneLine(result.stderr)).toBe(message);
    else expect(oneLine(result.stderr)).toMatch(message);
    expect(result.stdout).toBe('');
  });

  it('an unreachable server: one line naming it (not the password), exit code 1', async () => {
    const port = await closedPort();
    const result = await runCli(['--url', `postgres://ann:secret@127.0.0.1:${port}/app`, 'status']);
    expect(result.code).toBe(1);
    const line = oneLine(result.stderr);
    expect(line).toBe(`pgtide: cannot reach PostgreSQL at 127.0.0.1:${port}/app: connect ECONNREFUSED 127.0.0.1:${port}`);
    expect(line).not.toContain('secret');
  });
});

describe('pgtide commands on a database', () => {
  let db: TestDatabase;
  const cli = (...args: string[]) => runCli(['--url', db.url, ...args]);

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(`
      CREATE TABLE mail_users (id int PRIMARY KEY, gid int NOT NULL, username text NOT NULL, quota_bytes bigint NOT NULL);
      CREATE TABLE audit (at timestamptz, what text);`);
  });
  afterAll(async () => {
    await db.drop();
  });

  it('refuses to inspect a database without pgtide, and does not install it', async () => {
    for (const args of [['status'], ['prune'], ['unwatch', 'mail_users'], ['consumers', 'drop', 'x']]) {
      const result = await cli(...args);
      expect(result.code).toBe(1);
      expect(oneLine(result.stderr)).toMatch(/^pgtide: pgtide is not installed in 127\.0\.0\.1:\d+\/pgtide_test_\w+ \(no schema "pgtide"\): run `pgtide install` first$/);
    }
    const { rowCount } = await db.pool.query(`SELECT FROM pg_namespace WHERE nspname = 'pgtide'`);
    expect(rowCount).toBe(0);
  });

  it('wrong credentials: the server says why, exit code 1', async () => {
    const url = new URL(db.url);
    url.password = 'wrong';
    const result = await runCli(['--url', url.toString(), 'status']);
    expect(result.code).toBe(1);
    expect(oneLine(result.stderr)).toMatch(/^pgtide: PostgreSQL: password authentication failed for user "postgres" \[SQLSTATE 28P01\]$/);
  });

  it('install creates the schema at the latest version, and is idempotent', async () => {
    for (let run = 0; run < 2; run += 1) {
      const result = await cli('install');
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`^pgtide: schema "pgtide" is installed at version ${latestVersion} on 127\\.0\\.0\\.1:\\d+/pgtide_test_\\w+\\n$`));
    }
    const { rows } = await db.pool.query<{ version: number }>('SELECT max(version) AS version FROM pgtide.migrations');
    expect(rows[0]!.version).toBe(latestVersion);
  });

  it('watch: unknown table, unknown column and a table without a key fail in one line with their code', async () => {
    const unknownTable = await cli('watch', 'nope');
    expect(unknownTable.code).toBe(1);
    expect(oneLine(unknownTable.stderr)).toBe('pgtide: table "nope" does not exist (or is not on the search_path) [UNKNOWN_TABLE]');
    const unknownColumn = await cli('watch', 'mail_users', '--columns', 'quota_bytes,nope');
    expect(unknownColumn.code).toBe(1);
    expect(oneLine(unknownColumn.stderr)).toMatch(/^pgtide: columns: table public\.mail_users has no column "nope" .*\[UNKNOWN_COLUMN\]$/);
    const noKey = await cli('watch', 'audit');
    expect(noKey.code).toBe(1);
    expect(oneLine(noKey.stderr)).toMatch(/\[NO_PRIMARY_KEY\]$/);
    const { rows } = await db.pool.query('SELECT relid FROM pgtide.watched');
    expect(rows).toEqual([]);
  });

  it('watch --columns captures updates of those columns only; watching again widens', async () => {
    const result = await cli('watch', 'mail_users', '--columns', 'quota_bytes');
    expect(result).toMatchObject({ code: 0, stdout: 'pgtide: watching public.mail_users (updates of: quota_bytes)\n' });
    await db.pool.query(`INSERT INTO mail_users VALUES (1, 1000, 'ann', 100)`);
    await db.pool.query(`UPDATE mail_users SET username = 'anne' WHERE id = 1`); // not captured
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 200 WHERE id = 1`);
    const { rows } = await db.pool.query<{ op: string }>(`SELECT op FROM pgtide.log ORDER BY id`);
    expect(rows.map((row) => row.op)).toEqual(['i', 'u']);

    const widened = await cli('watch', 'mail_users', '--columns', 'username');
    expect(widened.stdout).toBe('pgtide: watching public.mail_users (updates of: quota_bytes, username)\n');
  });

  it('status shows watched tables, log size, consumers with position and lag, and open writing transactions', async () => {
    await db.pool.query(`INSERT INTO mail_users VALUES (2, 1000, 'bob', 100), (3, 1000, 'cy', 100)`);
    // A durable consumer that has processed the first two of the four changes.
    const tide = await db.tide({ acknowledgeFlushDelay: 0 });
    await firstValueFrom(tide.changes$('mail_users', { consumer: 'mailer', from: 'beginning', columns: ['quota_bytes', 'username'] }).pipe(take(2), acknowledge(), toArray()));
    await tide.close();
    const blocker = new pg.Client({ connectionString: db.url, application_name: 'slow-writer' });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query(`INSERT INTO audit VALUES (now(), 'held open')`);
    try {
      const json = await cli('status', '--json');
      expect(json.code).toBe(0);
      const status = JSON.parse(json.stdout) as Record<string, any>;
      expect(status).toMatchObject({
        schema: 'pgtide',
        version: latestVersion,
        watched: [{ table: 'public.mail_users', columns: ['quota_bytes', 'username'], changes: 4 }],
        log: { changes: 4 },
        consumers: [{ name: 'mailer', table: 'public.mail_users', lagChanges: 2, expiredAt: null }],
      });
      expect(status.log.bytes).toBeGreaterThan(0);
      expect(status.consumers[0].lagSeconds).toBeGreaterThan(0);
      const { rows: logIds } = await db.pool.query<{ id: string }>('SELECT id::text FROM pgtide.log ORDER BY id');
      expect(status.consumers[0].acknowledgedId).toBe(logIds[1]!.id);
      // Other test files share the server: their transactions may be listed too.
      expect(status.blockers).toContainEqual(
        expect.objectContaining({ applicationName: 'slow-writer', query: expect.stringContaining('held open') }),
      );

      const human = await cli('status');
      expect(human.code).toBe(0);
      const text = human.stdout;
      expect(text).toMatch(new RegExp(`^pgtide schema "pgtide" at version ${latestVersion} on 127\\.0\\.0\\.1:\\d+/pgtide_test_\\w+\\n`));
      expect(text).toMatch(/^watched tables \(1\)\n  public\.mail_users  updates of: quota_bytes, username  4 changes in the log$/m);
      expect(text).toMatch(/^log: 4 changes, \d+(\.\d)? kB, oldest written [\d.]+ (s|min) ago$/m);
      expect(text).toMatch(new RegExp(`^consumers \\(1\\)\\n  mailer  public\\.mail_users  at #${logIds[1]!.id}  lag 2 changes, [\\d.]+ s  acknowledged \\S+Z$`, 'm'));
      expect(text).toMatch(/^open writing transactions \(\d+; changes wait for the oldest\)$/m);
      expect(text).toMatch(/^  pid \d+  open [\d.]+ s  idle in transaction  INSERT INTO audit VALUES \(now\(\), 'held open'\)$/m);
    } finally {
      await blocker.query('ROLLBACK');
      await blocker.end();
    }
  });

  it('prune deletes what every consumer acknowledged', async () => {
    const result = await cli('prune');
    expect(result).toMatchObject({ code: 0, stdout: 'pgtide: pruned 2 changes\n' });
    const { rows } = await db.pool.query<{ count: string }>('SELECT count(*) FROM pgtide.log');
    expect(rows[0]!.count).toBe('2');
  });

  it('prune --max-lag expires a consumer that lags too far, and says so', async () => {
    const result = await cli('prune', '--max-lag', '1');
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('pgtide: pruned 0 changes\npgtide: expired consumers (more than --max-lag behind): mailer\n');
    const list = await cli('consumers', '--json');
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ name: 'mailer', expiredAt: expect.any(String) })]);
    const human = await cli('consumers', 'list');
    expect(human.stdout).toMatch(/^mailer  public\.mail_users  at log start  EXPIRED \S+Z\n$/);
  });

  it('prune --retention deletes old changes of tables without a live consumer', async () => {
    const result = await cli('prune', '--retention', '0s');
    expect(result).toMatchObject({ code: 0, stdout: 'pgtide: pruned 2 changes\n' });
  });

  it('consumers drop removes a consumer; an unknown one is an error', async () => {
    const dropped = await cli('consumers', 'drop', 'mailer');
    expect(dropped).toMatchObject({ code: 0, stdout: 'pgtide: dropped consumer "mailer"\n' });
    const { rowCount } = await db.pool.query('SELECT FROM pgtide.consumers');
    expect(rowCount).toBe(0);
    const again = await cli('consumers', 'drop', 'mailer');
    expect(again.code).toBe(1);
    expect(oneLine(again.stderr)).toBe('pgtide: no consumer named "mailer"');
    expect((await cli('consumers')).stdout).toBe('pgtide: no consumers\n');
  });

  it('dead-letters list, retry and drop a consumer\'s dead letters; status shows a group\'s members and holdings', async () => {
    const tide = await db.tide({ pruneInterval: 0, acknowledgeFlushDelay: 10 });
    await tide.watch('mail_users');
    const failing = tide
      .changes$('mail_users', { consumer: 'quota', from: 'now' })
      .pipe(processChanges(() => Promise.reject(new Error('disk full')), { attempts: 2, backoff: () => 1 }))
      .subscribe();
    const member = tide.changes$('mail_users', { consumer: 'mailers', group: { partitions: 4 } }).subscribe();
    await new Promise((resolve) => setTimeout(resolve, 300));
    await db.pool.query("INSERT INTO mail_users VALUES (41, 1, 'dl', 1)");
    const deadline = Date.now() + 10_000;
    while ((await tide.deadLetters('quota')).length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    failing.unsubscribe();
    const listed = await cli('dead-letters', 'list', 'quota');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/^#(\d+)\s+change \d+ \(insert public\.mail_users \{"id":41\}\)\s+2 attempts\s+failed \S+\s+disk full\n$/);
    const id = /^#(\d+)/.exec(listed.stdout)![1]!;
    const json = JSON.parse((await cli('dead-letters', 'list', 'quota', '--json')).stdout) as Array<{ id: string; error: string }>;
    expect(json).toMatchObject([{ id, error: 'disk full', attempts: 2 }]);
    expect(await cli('dead-letters', 'retry', 'quota', `#${id}`)).toMatchObject({ code: 0, stdout: 'pgtide: asked to retry 1 dead letter of "quota"\n' });
    expect((await cli('dead-letters', 'list', 'quota')).stdout).toContain('retry asked');
    const status = await cli('status');
    expect(status.stdout).toMatch(/^group mailers: 4 partitions, 1 member$/m);
    // The member acknowledges nothing: its lag is the one change.
    expect(status.stdout).toMatch(/^ {4}\S+:\d+:[0-9a-f]{6}\s+holds 0-3\s+lag 1 change, /m);
    expect(await cli('dead-letters', 'drop', 'quota')).toMatchObject({ code: 0, stdout: 'pgtide: dropped 1 dead letter of "quota"\n' });
    expect((await cli('dead-letters', 'list', 'quota')).stdout).toBe('pgtide: no dead letters for "quota"\n');
    expect((await cli('dead-letters', 'list', '')).code).toBe(1);
    member.unsubscribe();
    await tide.dropConsumer('mailers');
    await tide.dropConsumer('quota');
    // Leave the log as the tests after this one expect it: empty.
    await db.pool.query('DELETE FROM pgtide.log');
  });

  it('unwatch removes capture; unwatching again says it was not watched', async () => {
    const result = await cli('unwatch', 'mail_users');
    expect(result).toMatchObject({ code: 0, stdout: 'pgtide: no longer watching mail_users\n' });
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 300`);
    const { rows } = await db.pool.query<{ count: string }>('SELECT count(*) FROM pgtide.log');
    expect(rows[0]!.count).toBe('0');
    const again = await cli('unwatch', 'mail_users');
    expect(again).toMatchObject({ code: 0, stdout: 'pgtide: mail_users was not watched\n' });
    const unknown = await cli('unwatch', 'nope');
    expect(unknown.code).toBe(1);
    expect(oneLine(unknown.stderr)).toMatch(/\[UNKNOWN_TABLE\]$/);
  });

  it('reads DATABASE_URL when --url is not given', async () => {
    const result = await runCli(['status', '--json'], { env: { DATABASE_URL: db.url } });
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ schema: 'pgtide', watched: [] });
  });

  it('--schema selects another pgtide schema', async () => {
    const install = await cli('--schema', 'tide_two', 'install');
    expect(install.stdout).toMatch(/^pgtide: schema "tide_two" is installed/);
    const { rowCount } = await db.pool.query(`SELECT FROM pg_namespace WHERE nspname = 'tide_two'`);
    expect(rowCount).toBe(1);
  });
});
