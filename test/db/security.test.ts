import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { filter, firstValueFrom, map, take, tap, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acknowledge } from '../../operators/acknowledge.js';
import { processChanges } from '../../operators/processChanges.js';
import { connect, PgTideError, type Tide } from '../../src/index.js';
import { createTestDatabase, eventually, quietLogger, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let admin: Tide;
const suffix = randomBytes(4).toString('hex');
const app = `pgtide_app_${suffix}`;
const nobody = `pgtide_nobody_${suffix}`;
const password = 'app-secret';

function urlAs(role: string, secret = password): string {
  const url = new URL(db.url);
  url.username = role;
  url.password = secret;
  return url.toString();
}

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE ROLE ${app} LOGIN PASSWORD '${password}';
    CREATE ROLE ${nobody} LOGIN PASSWORD '${password}';
    CREATE TABLE items (id int PRIMARY KEY, title text);
    CREATE TABLE secrets (id int PRIMARY KEY, secret text);
    GRANT SELECT, INSERT, UPDATE ON items TO ${app};
    GRANT INSERT ON secrets TO ${app};`);
  admin = await db.tide({ pruneInterval: 0 });
  await admin.watch('items');
  await admin.watch('secrets');
  await db.pool.query(`SELECT pgtide.grant_consumer('${app}')`);
});
afterAll(async () => {
  await db.drop();
  const server = new pg.Client({ connectionString: new URL('/postgres', db.url).toString() });
  await server.connect();
  await server.query(`DROP ROLE IF EXISTS ${app}; DROP ROLE IF EXISTS ${nobody}`);
  await server.end();
});

describe('an application role with grant_consumer', () => {
  it('consumes and acknowledges the tables it may read, and its writes are captured', async () => {
    const tide = await connect({ connectionString: urlAs(app), logger: quietLogger, pruneInterval: 0 });
    try {
      const appPool = new pg.Pool({ connectionString: urlAs(app) });
      const changes = firstValueFrom(
        tide.changes$('items', { consumer: 'app-items', from: 'beginning' }).pipe(take(2), acknowledge(), toArray()),
      );
      await appPool.query(`INSERT INTO items VALUES (1, 'one'), (2, 'two')`);
      expect((await changes).map((change) => change.key['id'])).toEqual([1, 2]);
      await eventually(async () => (await tide.consumers())[0]?.lagChanges === 0, 'acknowledged');
      await appPool.query(`INSERT INTO secrets VALUES (1, 'written by the app, captured as the owner')`);
      const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM pgtide.log WHERE relid = 'secrets'::regclass`);
      expect(rows[0].n).toBe(1);
      expect((await tide.prune()).deleted).toBeGreaterThanOrEqual(2);
      await appPool.end();
    } finally {
      await tide.close();
    }
  });

  it('runs a consumer group member and keeps, lists and retries dead letters', async () => {
    const tide = await connect({ connectionString: urlAs(app), logger: quietLogger, pruneInterval: 0, acknowledgeFlushDelay: 10 });
    try {
      const appPool = new pg.Pool({ connectionString: urlAs(app) });
      const shares: number[][] = [];
      const member = tide
        .events$('items', { consumer: 'app-group', group: { partitions: 2 }, from: 'now' })
        .pipe(
          tap((event) => event.kind === 'group' && shares.push([...event.holds])),
          filter((event) => event.kind === 'change'),
          map((event) => (event as Extract<typeof event, { kind: 'change' }>).change),
          processChanges((change) => (change.key['id'] === 11 ? Promise.reject(new Error('no')) : undefined), { attempts: 1 }),
        )
        .subscribe();
      await eventually(() => shares.at(-1)?.length === 2, 'the member holds both partitions');
      await new Promise((resolve) => setTimeout(resolve, 200));
      await appPool.query(`INSERT INTO items VALUES (10, 'ten'), (11, 'eleven')`);
      await eventually(async () => (await tide.deadLetters('app-group')).length === 1, 'a dead letter');
      expect(await tide.retryDeadLetters('app-group')).toBe(1);
      await eventually(async () => (await tide.deadLetters('app-group'))[0]?.retryRequestedAt === null, 'retried and kept again');
      const [group] = (await tide.consumers()).filter((consumer) => consumer.name === 'app-group');
      expect(group?.group?.members).toHaveLength(1);
      member.unsubscribe();
      expect(await tide.dropDeadLetters('app-group')).toBe(1);
      expect(await tide.dropConsumer('app-group')).toBe(true);
      await appPool.end();
    } finally {
      await tide.close();
    }
  });

  it('cannot read the changes of a table it may not SELECT, through pgtide or the log itself', async () => {
    const tide = await connect({ connectionString: urlAs(app), logger: quietLogger, pruneInterval: 0 });
    try {
      const error = await firstValueFrom(tide.changes$('secrets', { from: 'beginning' })).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(PgTideError);
      expect((error as PgTideError).code).toBe('PERMISSION_DENIED');
      expect((error as PgTideError).message).toContain('secrets');
      const direct = new pg.Client({ connectionString: urlAs(app) });
      await direct.connect();
      const { rows } = await direct.query(
        `SELECT count(*)::int AS n FROM pgtide.log WHERE relid = 'secrets'::regclass`,
      );
      const viaFunction = await direct.query(
        `SELECT count(id)::int AS n FROM pgtide.read_batch('secrets'::regclass, 1, '3:3:', NULL, NULL, 100, false)`,
      );
      await direct.end();
      expect(rows[0].n).toBe(0);
      expect(viaFunction.rows[0].n).toBe(0);
      const { rows: all } = await db.pool.query(`SELECT count(*)::int AS n FROM pgtide.log WHERE relid = 'secrets'::regclass`);
      expect(all[0].n).toBeGreaterThan(0);
    } finally {
      await tide.close();
    }
  });

  it('cannot install capture on a table it does not own', async () => {
    await db.pool.query(`CREATE TABLE owned_by_admin (id int PRIMARY KEY); GRANT SELECT ON owned_by_admin TO ${app}`);
    const tide = await connect({ connectionString: urlAs(app), logger: quietLogger, pruneInterval: 0 });
    try {
      await expect(tide.watch('owned_by_admin')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
      const { rows } = await db.pool.query(
        `SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = 'owned_by_admin'::regclass AND NOT tgisinternal`,
      );
      expect(rows[0].n).toBe(0);
    } finally {
      await tide.close();
    }
  });
});

describe('what other roles see', () => {
  it('NOTIFY payloads carry only a table oid, never row data', async () => {
    const listener = new pg.Client({ connectionString: urlAs(nobody) });
    await listener.connect();
    const payloads: string[] = [];
    listener.on('notification', (message) => payloads.push(message.payload ?? ''));
    await listener.query('LISTEN pgtide');
    await db.pool.query(`INSERT INTO secrets VALUES (42, 'the launch code is 0000')`);
    await eventually(() => payloads.length > 0, 'a notification');
    await listener.end();
    const { rows } = await db.pool.query(`SELECT 'secrets'::regclass::oid::text AS oid`);
    expect(payloads).toEqual([rows[0].oid]);
  });

  it('PUBLIC can neither read nor write the SDK schema, nor call its functions', async () => {
    const { rows } = await db.pool.query(
      `SELECT has_schema_privilege($1, 'pgtide', 'USAGE') AS schema_usage,
              has_table_privilege($1, 'pgtide.log', 'SELECT') AS log_select,
              has_table_privilege($1, 'pgtide.log', 'INSERT') AS log_insert,
              has_table_privilege($1, 'pgtide.consumers', 'UPDATE') AS consumers_update,
              bool_or(has_function_privilege($1, p.oid, 'EXECUTE')) AS any_function
         FROM pg_proc p WHERE p.pronamespace = 'pgtide'::regnamespace`,
      [nobody],
    );
    expect(rows[0]).toEqual({
      schema_usage: false,
      log_select: false,
      log_insert: false,
      consumers_update: false,
      any_function: false,
    });
    const { rows: pinned } = await db.pool.query(
      `SELECT p.proname, p.proconfig FROM pg_proc p
        WHERE p.pronamespace = 'pgtide'::regnamespace AND p.prosecdef ORDER BY 1`,
    );
    expect(pinned.map((row) => row.proname)).toEqual(['capture', 'capture_truncate', 'current_era', 'follow_ddl', 'wake_readers']);
    for (const row of pinned) expect(row.proconfig).toContain('search_path=pg_catalog, pg_temp');
  });

  it('a role without privileges gets PERMISSION_DENIED from connect', async () => {
    await expect(connect({ connectionString: urlAs(nobody), logger: quietLogger })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
  });
});

describe('connection problems are typed', () => {
  it('wrong password: AUTHENTICATION_FAILED', async () => {
    const error = await connect({ connectionString: urlAs(app, 'wrong'), logger: quietLogger }).catch((caught: unknown) => caught);
    expect(error).toMatchObject({ code: 'AUTHENTICATION_FAILED', message: expect.stringContaining('password') });
  });

  it('unreachable server: CONNECTION_FAILED naming the cause', async () => {
    const closed = new URL(db.url);
    closed.port = '1';
    const error = await connect({ connectionString: closed.toString(), logger: quietLogger }).catch((caught: unknown) => caught);
    expect(error).toMatchObject({ code: 'CONNECTION_FAILED', message: expect.stringContaining('ECONNREFUSED') });
  });

  it('unknown database: CONNECTION_FAILED', async () => {
    const missing = new URL(db.url);
    missing.pathname = '/no_such_database';
    await expect(connect({ connectionString: missing.toString(), logger: quietLogger })).rejects.toMatchObject({
      code: 'CONNECTION_FAILED',
      message: expect.stringContaining('no_such_database'),
    });
  });
});

