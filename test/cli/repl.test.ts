import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers.js';
import { CLI, ROOT, canFakeTerminal } from './run.js';

// `pgtide repl` in a real pseudo-terminal (util-linux `script`): what a person types, what they see.

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE mail_users (id int PRIMARY KEY, username text NOT NULL, quota_bytes bigint NOT NULL)');
});

afterAll(async () => {
  await db?.drop();
});

/** The REPL in a terminal: type into it, wait for what it shows. */
function startReplInTerminal(url: string) {
  const command = [process.execPath, ...CLI, '--url', url, 'repl'].map((part) => `'${part.replaceAll("'", `'\\''`)}'`).join(' ');
  const child = spawn('script', ['-qfc', command, '/dev/null'], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', TERM: 'dumb' }, stdio: 'pipe' });
  let screen = '';
  child.stdout.on('data', (chunk: Buffer) => (screen += chunk.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 40_000);
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => {
    clearTimeout(killer);
    resolve(code);
  }));
  const plain = () => screen.replace(/\u001b\[[0-9;?]*[A-Za-z]/g, '').replaceAll('\r', '');
  return {
    exited,
    screen: plain,
    type: (text: string) => child.stdin.write(text),
    async waitFor(pattern: RegExp, timeout = 15_000) {
      const deadline = Date.now() + timeout;
      while (!pattern.test(plain())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}; the terminal shows:\n${plain()}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
}

describe.skipIf(!canFakeTerminal)('pgtide repl', () => {
  it('has tide, rxjs and the operators in scope with top-level await, pretty-prints changes, and tails a table until .stop', async () => {
    const terminal = startReplInTerminal(db.url);
    await terminal.waitFor(/pgtide REPL on .*\n.*pgtide> /);
    terminal.type(`await tide.watch('mail_users').then((w) => w.table)\n`);
    await terminal.waitFor(/'public\.mail_users'/);
    terminal.type(`typeof processChanges + ' ' + typeof map + ' ' + typeof rxjs.firstValueFrom\n`);
    await terminal.waitFor(/'function function function'/);
    terminal.type(`.tail mail_users\n`);
    await terminal.waitFor(/pgtide: following mail_users \(\.stop to end\)/);
    await db.pool.query(`INSERT INTO mail_users VALUES (1, 'ann', 100)`);
    await terminal.waitFor(/#\d+ \S+ insert id=1 {2}username="ann" quota_bytes="100"/);
    // A change as an expression's value prints as tail prints it.
    terminal.type(`await rxjs.firstValueFrom(tide.changes$('mail_users').pipe(ofOperation('update')))\n`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await db.pool.query(`UPDATE mail_users SET quota_bytes = 200 WHERE id = 1`);
    await terminal.waitFor(/#\d+ \S+ update id=1 {2}quota_bytes: "100" -> "200"[\s\S]*#\d+ \S+ update id=1 {2}quota_bytes: "100" -> "200"/);
    terminal.type(`.stop\n`);
    await terminal.waitFor(/pgtide: stopped mail_users/);
    const before = terminal.screen().length;
    await db.pool.query(`DELETE FROM mail_users`);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(terminal.screen().slice(before)).not.toMatch(/delete id=1/);
    terminal.type(`.exit\n`);
    expect(await terminal.exited).toBe(0);
  }, 45_000);
});
