import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, PgTideError, type Tide } from '../../src/index.js';
import { migrations } from '../../src/migrations.generated.js';
import { createTestDatabase, eventually, follow, quietLogger, type TestDatabase } from '../helpers.js';

let db: TestDatabase;
let tide: Tide;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query(`
    CREATE TABLE items (id int PRIMARY KEY, name text);
    CREATE TABLE other (id int PRIMARY KEY, name text);
    CREATE TABLE keyless (name text);
    CREATE VIEW items_view AS SELECT * FROM items;
    CREATE TABLE "Mail Users" ("User ID" int PRIMARY KEY, "we""ird" text);`);
  tide = await db.tide();
});
afterAll(() => db.drop());

async function listenBackends(): Promise<number> {
  const { rows } = await db.pool.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN %'`,
  );
  return rows[0].n as number;
}

describe('sharing', () => {
  it('serves many observables over several tables with exactly one LISTEN connection', async () => {
    const streams = [
      ...Array.from({ length: 50 }, (_, id) => follow(tide, 'items', { rowId: id })),
      ...Array.from({ length: 10 }, () => follow(tide, 'items')),
      ...Array.from({ length: 10 }, () => follow(tide, 'other', { columns: ['name'] })),
    ];
    await Promise.all(streams.map((stream) => stream.ready));
    expect(await listenBackends()).toBe(1);
    await db.pool.query(`INSERT INTO items SELECT g, 'n' || g FROM generate_series(0, 49) g`);
    await db.pool.query(`INSERT INTO other VALUES (1, 'x')`);
    const expected = (index: number) => (index >= 50 && index < 60 ? 50 : 1);
    await eventually(() => streams.every((stream, index) => stream.changes.length === expected(index)), 'all streams');
    for (let id = 0; id < 50; id += 1) expect(streams[id]!.changes.map((change) => change.key['id'])).toEqual([id]);
    for (const whole of streams.slice(50, 60)) expect(whole.changes).toHaveLength(50);
    for (const others of streams.slice(60)) expect(others.changes.map((change) => change.table)).toEqual(['other']);
    for (const stream of streams) stream.unsubscribe();
  });

  it('keeps capture installed after the last subscriber leaves, and delivers what happened meanwhile', async () => {
    const first = follow(tide, 'other', { consumer: 'other-consumer' });
    await first.ready;
    first.unsubscribe();
    await db.pool.query(`INSERT INTO other VALUES (2, 'while nobody subscribed')`);
    const second = follow(tide, 'other', { consumer: 'other-consumer' });
    await second.ready;
    expect(second.changes.map((change) => change.key['id'])).toEqual([2]);
    second.unsubscribe();
  });
});

describe('typed errors, before anything is installed', () => {
  async function streamError(table: string, options: object = {}): Promise<PgTideError> {
    const followed = follow(tide, table, options);
    await followed.ready.catch(() => undefined);
    expect(followed.state.error).toBeInstanceOf(PgTideError);
    return followed.state.error as PgTideError;
  }
  async function triggersOn(table: string): Promise<number> {
    const { rows } = await db.pool.query(
      `SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal`,
      [table],
    );
    return rows[0].n as number;
  }

  it('UNKNOWN_TABLE', async () => {
    const error = await streamError('nope');
    expect(error.code).toBe('UNKNOWN_TABLE');
    expect(error.message).toContain('nope');
    await expect(tide.watch('public.nope')).rejects.toMatchObject({ code: 'UNKNOWN_TABLE' });
  });

  it('UNKNOWN_COLUMN for columns and field, naming the column, with no trigger left behind', async () => {
    const columns = await streamError('other', { columns: ['name', 'colour'] });
    expect(columns.code).toBe('UNKNOWN_COLUMN');
    expect(columns.message).toContain('"colour"');
    const field = await streamError('keyless', { rowId: 1, field: 'x' });
    expect(field.code).toBe('NO_PRIMARY_KEY');
    const items = await streamError('"Mail Users"', { rowId: 1, field: 'nope' });
    expect(items.code).toBe('UNKNOWN_COLUMN');
    expect(await triggersOn('"Mail Users"')).toBe(0);
  });

  it('NO_PRIMARY_KEY and UNSUPPORTED_TABLE', async () => {
    await expect(tide.watch('keyless')).rejects.toMatchObject({ code: 'NO_PRIMARY_KEY' });
    expect(await triggersOn('keyless')).toBe(0);
    await expect(tide.watch('items_view')).rejects.toMatchObject({ code: 'UNSUPPORTED_TABLE' });
  });

  it('INVALID_OPTIONS synchronously, naming the field', () => {
    const invalid = (run: () => unknown) => {
      try {
        run();
      } catch (error) {
        expect(error).toBeInstanceOf(PgTideError);
        return error as PgTideError;
      }
      throw new Error('expected INVALID_OPTIONS');
    };
    expect(invalid(() => tide.changes$('items', { field: 'name' })).message).toContain('field: field needs rowId');
    expect(invalid(() => tide.changes$('items', { columns: [] })).message).toContain('columns');
    expect(invalid(() => tide.changes$('items', { from: { after: 'x' } })).message).toContain('from');
    expect(invalid(() => tide.changes$('items', { colums: ['name'] } as object)).code).toBe('INVALID_OPTIONS');
    expect(invalid(() => tide.changes$('items', { consumer: '' })).message).toContain('consumer');
    expect(invalid(() => tide.changes$('')).code).toBe('INVALID_TABLE_NAME');
  });

  it('INVALID_OPTIONS from connect()', async () => {
    await expect(connect({})).rejects.toMatchObject({ code: 'INVALID_OPTIONS' });
    await expect(connect({ connectionString: db.url, schema: '' })).rejects.toMatchObject({
      code: 'INVALID_OPTIONS',
      message: expect.stringContaining('schema'),
    });
    await expect(connect({ connectionString: db.url, pageSize: 0 })).rejects.toMatchObject({
      message: expect.stringContaining('pageSize'),
    });
  });

  it('UNKNOWN_POSITION and CONSUMER_TABLE_MISMATCH', async () => {
    expect((await streamError('items', { from: { after: '999999999' } })).code).toBe('UNKNOWN_POSITION');
    const first = follow(tide, 'items', { consumer: 'bound-to-items' });
    await first.ready;
    first.unsubscribe();
    expect((await streamError('other', { consumer: 'bound-to-items' })).code).toBe('CONSUMER_TABLE_MISMATCH');
  });

  it('watches quoted identifiers given as names or as SQL', async () => {
    const byName = follow(tide, 'Mail Users');
    const bySql = follow(tide, 'public."Mail Users"');
    await Promise.all([byName.ready, bySql.ready]);
    await db.pool.query(`INSERT INTO "Mail Users" VALUES (1, 'q"uote')`);
    await eventually(() => byName.changes.length === 1 && bySql.changes.length === 1, 'both streams');
    expect(byName.changes[0]).toMatchObject({ table: 'Mail Users', key: { 'User ID': 1 }, new: { 'we"ird': 'q"uote' } });
    byName.unsubscribe();
    bySql.unsubscribe();
  });
});

describe('unwatch and close', () => {
  it('unwatch removes the triggers; changes are no longer captured', async () => {
    await db.pool.query(`CREATE TABLE temporary (id int PRIMARY KEY)`);
    await tide.watch('temporary');
    expect(await tide.unwatch('temporary')).toBe(true);
    expect(await tide.unwatch('temporary')).toBe(false);
    await db.pool.query(`INSERT INTO temporary VALUES (1)`);
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM pgtide.log WHERE relid = 'temporary'::regclass`);
    expect(rows[0].n).toBe(0);
  });

  it('close() completes every stream, ends the LISTEN connection, and leaves a passed pool open', async () => {
    const pool = new pg.Pool({ connectionString: db.url });
    const own = await connect({ pool, logger: quietLogger });
    const streams = [follow(own, 'items'), follow(own, 'other', { rowId: 1 })];
    await Promise.all(streams.map((stream) => stream.ready));
    expect(await listenBackends()).toBe(2);
    await own.close();
    expect(streams.every((stream) => stream.state.completed && stream.state.error === undefined)).toBe(true);
    await eventually(async () => (await listenBackends()) === 1, 'LISTEN backend gone');
    expect((await pool.query('SELECT 1 AS ok')).rows[0].ok).toBe(1);
    expect(() => own.changes$('items')).toThrow(expect.objectContaining({ code: 'CLOSED' }));
    await pool.end();
  });

  it('installs the schema once when ten processes connect at the same time', async () => {
    const fresh = await createTestDatabase();
    try {
      const tides = await Promise.all(
        Array.from({ length: 10 }, () => connect({ connectionString: fresh.url, logger: quietLogger })),
      );
      const { rows } = await fresh.pool.query(`SELECT version FROM pgtide.migrations ORDER BY version`);
      expect(rows).toEqual(migrations.map(({ version }) => ({ version })));
      await Promise.all(tides.map((each) => each.close()));
      const again = await connect({ connectionString: fresh.url, logger: quietLogger });
      await again.close();
      await fresh.pool.query(`INSERT INTO pgtide.migrations VALUES (999)`);
      await expect(connect({ connectionString: fresh.url, logger: quietLogger })).rejects.toMatchObject({
        code: 'SCHEMA_TOO_NEW',
      });
    } finally {
      await fresh.drop();
    }
  });

  it('uses a custom schema name, quoted', async () => {
    const custom = await db.tide({ schema: 'Tide Log' });
    const followed = follow(custom, 'items', { rowId: 77 });
    await followed.ready;
    await db.pool.query(`INSERT INTO items VALUES (77, 'custom')`);
    await eventually(() => followed.changes.length === 1, 'change via custom schema');
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM "Tide Log".log`);
    expect(rows[0].n).toBeGreaterThan(0);
    followed.unsubscribe();
  });
});

describe('LISTEN is only a hint', () => {
  it('keeps delivering when the LISTEN backend is killed, and says so through the logger', async () => {
    const warnings: string[] = [];
    const logger = { ...quietLogger, warn: (message: string) => warnings.push(message) };
    const watched = await db.tide({ logger, pollInterval: 100 });
    const followed = follow(watched, 'items', { rowId: 5000 });
    await followed.ready;
    await db.pool.query(`
      SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE datname = current_database() AND application_name = 'pgtide:listen'`);
    await db.pool.query(`INSERT INTO items VALUES (5000, 'written while LISTEN was down')`);
    await eventually(() => followed.changes.length === 1, 'change delivered');
    await eventually(() => warnings.some((message) => message.includes('LISTEN connection lost')), 'warning');
    await eventually(async () => (await listenBackends()) >= 2, 'LISTEN re-established');
    await db.pool.query(`UPDATE items SET name = 'after reconnect' WHERE id = 5000`);
    await eventually(() => followed.changes.length === 2, 'change after reconnect');
    followed.unsubscribe();
  });
});

describe('status', () => {
  it('reports watched tables and the log as a whole', async () => {
    await db.pool.query(`CREATE TABLE reported (id int PRIMARY KEY, a int, b int)`);
    const watched = await tide.watch('reported', { columns: ['b'] });
    expect(watched).toMatchObject({ table: 'public.reported', keyColumns: ['id'], columns: ['b'], changes: 0 });
    expect(watched.watchedAt).toBeInstanceOf(Date);
    await db.pool.query(`INSERT INTO reported VALUES (1, 1, 1), (2, 2, 2)`);
    const listed = (await tide.watched()).find((table) => table.table === 'public.reported');
    expect(listed).toMatchObject({ columns: ['b'], changes: 2 });
    expect((await tide.watch('reported')).columns).toBeNull();
    const stats = await tide.logStats();
    expect(stats.schemaVersion).toBe(migrations.at(-1)!.version);
    expect(stats.changes).toBeGreaterThanOrEqual(2);
    expect(stats.bytes).toBeGreaterThan(0);
    expect(stats.oldestWrittenAt).toBeInstanceOf(Date);
  });
});
