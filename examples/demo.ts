// The 60-second demo: a real PostgreSQL (embedded, or DATABASE_URL), a mail_users table,
// one subscriber, a few writes, the changes printed as they arrive. Run: npm run demo
import pg from 'pg';
import { firstValueFrom, filter, take, toArray } from 'rxjs';
import { startPostgres } from '../src/embedded.js';
import { connect } from '../src/index.js';

const server = process.env.DATABASE_URL ? undefined : await startPostgres();
const connectionString = process.env.DATABASE_URL ?? server!.connectionString;
console.log(server ? `embedded PostgreSQL on port ${server.port}` : 'using DATABASE_URL');

const pool = new pg.Pool({ connectionString });
await pool.query(`
  DROP TABLE IF EXISTS mail_users;
  CREATE TABLE mail_users (
    id serial PRIMARY KEY,
    gid int NOT NULL,
    username text NOT NULL UNIQUE,
    quota_bytes bigint NOT NULL,
    last_login timestamptz
  )`);

const tide = await connect({ connectionString });
const events = tide.events$('mail_users', { columns: ['gid', 'username', 'quota_bytes'] });

const expected = 5;
const done = firstValueFrom(
  events.pipe(
    filter((event) => event.kind === 'change'),
    take(expected),
    toArray(),
  ),
);
events.subscribe((event) => {
  if (event.kind === 'caught-up') {
    console.log('subscribed and caught up: writing rows');
    void write();
    return;
  }
  if (event.kind !== 'change') return;
  const { op, key, changed, old: before, new: after } = event.change;
  const detail =
    op === 'update'
      ? changed.filter((column) => column in (after ?? {})).map((column) => `${column}: ${before?.[column]} -> ${after?.[column]}`).join(', ')
      : JSON.stringify(after ?? before);
  console.log(`${op.padEnd(6)} ${JSON.stringify(key)} ${detail}`);
});

async function write(): Promise<void> {
  await pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1000, 'ann', 1e9), (1000, 'bob', 5e8)`);
  await pool.query(`UPDATE mail_users SET quota_bytes = 2e9 WHERE username = 'ann'`);
  await pool.query(`UPDATE mail_users SET last_login = now()`); // no watched column changed: not emitted
  await pool.query(`DELETE FROM mail_users WHERE username = 'bob'`);
  await pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1001, 'cy', 1e8)`);
}

const received = await done;
console.log(`received ${received.length} changes; closing`);
await tide.close();
await pool.end();
await server?.destroy();
