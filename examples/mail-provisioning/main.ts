// Runnable walk-through: npx tsx examples/mail-provisioning/main.ts
// Uses DATABASE_URL if set (it creates, and finally drops, a mail_users table there, and
// refuses to start if one exists), else an embedded PostgreSQL. Homes go to MAIL_ROOT, or a temporary directory.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import pg from 'pg';
import { startPostgres } from '../../src/embedded.js';
import { connect } from '../../src/index.js';
import { MAIL_USERS_DDL, provisioning } from './provisioner.js';

const server = process.env.DATABASE_URL ? undefined : await startPostgres();
const connectionString = process.env.DATABASE_URL ?? server!.connectionString;
const root = process.env.MAIL_ROOT ?? mkdtempSync(join(tmpdir(), 'maildirs-'));
const pool = new pg.Pool({ connectionString });
const settle = () => new Promise((resolve) => setTimeout(resolve, 500));

try {
  await pool.query(MAIL_USERS_DDL);
} catch (error) {
  if ((error as { code?: string }).code !== '42P07') throw error;
  console.error('a mail_users table exists already: this walk-through creates and drops its own, so it stops here');
  process.exit(1);
}
let tide = await connect({ connectionString });
await tide.dropConsumer('mail-provisioning'); // a fresh start for the walk-through
await tide.watch('mail_users'); // capture before the first row: the log holds the whole history

console.log(`provisioning into ${root}`);
provisioning(tide, { root }).subscribe();
await pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1000, 'ann', 1e9), (1000, 'bob', 5e8)`);
await settle();
show('after inserting ann and bob');

await tide.close();
console.log('\nprovisioner stopped; meanwhile: ann is renamed and moved to gid 2000, bob gets more quota, cy arrives');
await pool.query(`UPDATE mail_users SET username = 'anne', gid = 2000 WHERE username = 'ann'`);
await pool.query(`UPDATE mail_users SET quota_bytes = 9e8 WHERE username = 'bob'`);
await pool.query(`INSERT INTO mail_users (gid, username, quota_bytes) VALUES (1000, 'cy', 1e8)`);

tide = await connect({ connectionString });
provisioning(tide, { root }).subscribe();
await settle();
show('\nafter restarting: the backlog applied');

await tide.dropConsumer('mail-provisioning');
await tide.close();
await pool.query('DROP TABLE mail_users');
await pool.end();
await server?.destroy();
if (!process.env.MAIL_ROOT) rmSync(root, { recursive: true, force: true });

function show(title: string): void {
  console.log(title);
  const walk = (directory: string): void => {
    for (const name of readdirSync(directory).sort()) {
      const path = join(directory, name);
      if (statSync(path).isDirectory()) {
        if (name !== 'Maildir') walk(path);
        else console.log(`  ${relative(root, path)}/{cur,new,tmp}`);
      } else {
        console.log(`  ${relative(root, path)}: ${readFileSync(path, 'utf8').trim()}`);
      }
    }
  };
  walk(root);
}
