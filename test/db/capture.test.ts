import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPostgres, type EmbeddedPostgres } from '../../src/embedded.js';
import type { Change, SchemaChange, StreamEvent, Tide } from '../../src/index.js';
import { createTestDatabase, eventually, follow, quietLogger, type TestDatabase } from '../helpers.js';
import { connect } from '../../src/index.js';

// Every write path is captured, on the embedded PostgreSQL 18 and on Debian's 15.
const pg15 = '/usr/lib/postgresql/15/bin';

interface Server {
  readonly name: string;
  readonly available: boolean;
  database(): Promise<TestDatabase>;
}

let server15: EmbeddedPostgres | undefined;
const servers: Server[] = [
  { name: 'PostgreSQL 18', available: true, database: () => createTestDatabase() },
  {
    name: 'PostgreSQL 15',
    available: existsSync(`${pg15}/postgres`),
    async database() {
      server15 ??= await startPostgres({ binDir: pg15, settings: { fsync: 'off' } });
      return createTestDatabase(server15.connectionString);
    },
  },
];
afterAll(async () => {
  await server15?.destroy();
});

/** Everything `events$` emits, in order. */
function record(tide: Tide, table: string): { events: StreamEvent[]; ready: Promise<void>; unsubscribe(): void } {
  const events: StreamEvent[] = [];
  let ready!: () => void;
  const caughtUp = new Promise<void>((resolve) => (ready = resolve));
  const subscription = tide.events$(table).subscribe((event) => (event.kind === 'caught-up' ? ready() : events.push(event)));
  return { events, ready: caughtUp, unsubscribe: () => subscription.unsubscribe() };
}

const changesOf = (events: readonly StreamEvent[]): Change[] =>
  events.flatMap((event) => (event.kind === 'change' ? [event.change] : []));

for (const server of servers) {
  describe.runIf(server.available)(`capture on ${server.name}`, () => {
    let db: TestDatabase;
    let tide: Tide;

    beforeAll(async () => {
      db = await server.database();
      tide = await db.tide({ pruneInterval: 0, pollInterval: 200 });
    });
    afterAll(() => db?.drop());

    it('captures under session_replication_role = replica, TRUNCATE included', async () => {
      await db.pool.query(`CREATE TABLE replicated (id int PRIMARY KEY, v text)`);
      const stream = record(tide, 'replicated');
      await stream.ready;
      const client = await db.pool.connect();
      try {
        await client.query(`SET session_replication_role = replica`);
        await client.query(`INSERT INTO replicated VALUES (1, 'a'), (2, 'b')`);
        await client.query(`UPDATE replicated SET v = 'c' WHERE id = 1`);
        await client.query(`DELETE FROM replicated WHERE id = 2`);
        await client.query(`TRUNCATE replicated`);
        await client.query(`RESET session_replication_role`);
      } finally {
        client.release();
      }
      await eventually(() => changesOf(stream.events).length === 5, 'five changes');
      expect(changesOf(stream.events).map((change) => change.op)).toEqual(['insert', 'insert', 'update', 'delete', 'truncate']);
      stream.unsubscribe();
    });

    it('captures a partitioned table through the parent, straight into partitions, and into a partition attached later', async () => {
      await db.pool.query(`
        CREATE TABLE events (region text, id int, v int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
        CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
        -- Another column order than the parent's: rows still come in the parent's shape.
        CREATE TABLE events_us (v int, id int, region text, PRIMARY KEY (region, id));
        ALTER TABLE events ATTACH PARTITION events_us FOR VALUES IN ('us');`);
      const stream = follow(tide, 'events');
      const one = follow(tide, 'events', { rowId: { region: 'us', id: 2 } });
      await Promise.all([stream.ready, one.ready]);
      await db.pool.query(`INSERT INTO events VALUES ('eu', 1, 10), ('us', 2, 20)`); // through the parent
      await db.pool.query(`INSERT INTO events_us (region, id, v) VALUES ('us', 3, 30)`); // straight into a partition
      await db.pool.query(`UPDATE events_us SET v = 21 WHERE id = 2`);
      await db.pool.query(`CREATE TABLE events_ap PARTITION OF events FOR VALUES IN ('ap')`); // attached after watch()
      await db.pool.query(`INSERT INTO events_ap VALUES ('ap', 4, 40)`);
      await db.pool.query(`DELETE FROM events_eu WHERE id = 1`);
      await db.pool.query(`TRUNCATE events_us`); // a partition alone: its rows are deleted, the others stay
      await eventually(() => stream.changes.length === 8, 'eight changes');
      const shown = stream.changes.map((change) => [change.table, change.op, change.key]);
      // The partition's rows are deleted in heap order.
      shown.splice(6, 2, ...shown.slice(6).sort((a, b) => (a[2] as { id: number }).id - (b[2] as { id: number }).id));
      expect(shown).toEqual([
        ['events', 'insert', { region: 'eu', id: 1 }],
        ['events', 'insert', { region: 'us', id: 2 }],
        ['events', 'insert', { region: 'us', id: 3 }],
        ['events', 'update', { region: 'us', id: 2 }],
        ['events', 'insert', { region: 'ap', id: 4 }],
        ['events', 'delete', { region: 'eu', id: 1 }],
        ['events', 'delete', { region: 'us', id: 2 }],
        ['events', 'delete', { region: 'us', id: 3 }],
      ]);
      expect(stream.changes[2]!.new).toEqual({ region: 'us', id: 3, v: 30 });
      expect(Object.keys(stream.changes[2]!.new!)).toEqual(['region', 'id', 'v']);
      expect(stream.changes[3]).toMatchObject({ changed: ['v'], old: { v: 20 }, new: { v: 21 } });
      expect(one.changes.map((change) => change.op)).toEqual(['insert', 'update', 'delete']);
      await db.pool.query(`TRUNCATE events`);
      await eventually(() => stream.changes.length === 9, 'the truncate of the whole table');
      expect(stream.changes[8]).toMatchObject({ op: 'truncate', key: {} });
      // Watching a partition alone works as for any table.
      const partition = follow(tide, 'events_ap');
      await partition.ready;
      await db.pool.query(`INSERT INTO events_ap VALUES ('ap', 5, 50)`);
      await eventually(() => partition.changes.length === 1, 'the partition on its own');
      expect(partition.changes[0]).toMatchObject({ table: 'events_ap', op: 'insert', key: { region: 'ap', id: 5 } });
      for (const followed of [stream, one, partition]) followed.unsubscribe();
    });

    it('captures updates whose new value compares equal but is stored differently, and lists them in changed', async () => {
      await db.pool.query(`CREATE TABLE images (id int PRIMARY KEY, n numeric, j jsonb, t text, same int)`);
      await db.pool.query(`INSERT INTO images VALUES (1, 1.0, '{"a": 1}', 'x', 1)`);
      const stream = follow(tide, 'images');
      await stream.ready;
      await db.pool.query(`UPDATE images SET n = 1.000 WHERE id = 1`);
      await db.pool.query(`UPDATE images SET j = '{"a": 1.00}' WHERE id = 1`);
      await db.pool.query(`UPDATE images SET same = 1, n = 1.000 WHERE id = 1`); // no stored change: not captured
      await db.pool.query(`UPDATE images SET t = 'y' WHERE id = 1`);
      await eventually(() => stream.changes.length === 3, 'three updates');
      expect(stream.changes.map((change) => change.changed)).toEqual([['n'], ['j'], ['t']]);
      expect(stream.changes[0]).toMatchObject({ old: { n: '1.0' }, new: { n: '1.000' } });
      expect(stream.changes[1]!.new!['j']).toEqual({ a: 1.0 });
      stream.unsubscribe();
    });

    it('captures an update under a nondeterministic collation (alice -> ALICE)', async (context) => {
      const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM pg_collation WHERE collprovider = 'i'`);
      if (rows[0].n === 0) context.skip('this server has no ICU collations');
      await db.pool.query(`CREATE COLLATION IF NOT EXISTS case_blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`);
      await db.pool.query(`CREATE TABLE names (id int PRIMARY KEY, name text COLLATE case_blind)`);
      await db.pool.query(`INSERT INTO names VALUES (1, 'alice')`);
      const stream = follow(tide, 'names');
      await stream.ready;
      await db.pool.query(`UPDATE names SET name = 'ALICE' WHERE id = 1`);
      await eventually(() => stream.changes.length === 1, 'the case change');
      expect(stream.changes[0]).toMatchObject({ changed: ['name'], old: { name: 'alice' }, new: { name: 'ALICE' } });
      stream.unsubscribe();
    });

    it('delivers TRUNCATE in order to table streams, rowId streams, consumers and state$; CASCADE gives one per table', async () => {
      await db.pool.query(`
        CREATE TABLE parents (id int PRIMARY KEY);
        CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents);
        INSERT INTO parents VALUES (1), (2);
        INSERT INTO children VALUES (10, 1);`);
      const table = follow(tide, 'parents');
      const row = follow(tide, 'parents', { rowId: 1 });
      const consumer = follow(tide, 'children', { consumer: 'child-mirror', from: 'now' });
      const states: Array<ReadonlyMap<string, unknown>> = [];
      const state = tide.state$('parents').subscribe((map) => states.push(map));
      await Promise.all([table.ready, row.ready, consumer.ready]);
      await eventually(() => states.at(-1)?.size === 2, 'the first state');
      await db.pool.query(`INSERT INTO parents VALUES (3)`);
      const client = await db.pool.connect();
      let txid: string;
      try {
        await client.query('BEGIN');
        await client.query(`TRUNCATE parents CASCADE`);
        txid = (await client.query('SELECT pg_current_xact_id()::text AS txid')).rows[0].txid as string;
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      await db.pool.query(`INSERT INTO parents VALUES (4)`);
      await eventually(() => table.changes.length === 3, 'insert, truncate, insert');
      expect(table.changes.map((change) => change.op)).toEqual(['insert', 'truncate', 'insert']);
      expect(row.changes.map((change) => change.op)).toEqual(['truncate']);
      await eventually(() => consumer.changes.length === 1, 'the cascaded truncate');
      expect(consumer.changes[0]).toMatchObject({ op: 'truncate', table: 'children', txid });
      expect(table.changes[1]!.txid).toBe(txid);
      await eventually(() => states.at(-1)?.size === 1 && states.at(-1)!.has('4'), 'state$ emptied, then the new row');
      expect(states.some((map) => map.size === 0)).toBe(true);
      state.unsubscribe();
      for (const followed of [table, row, consumer]) followed.unsubscribe();
    });

    it('emits schema changes in events$, in order with the changes around them; changes$ carries on', async () => {
      await db.pool.query(`CREATE TABLE evolving (id int PRIMARY KEY, a text)`);
      const stream = record(tide, 'evolving');
      const plain = follow(tide, 'evolving');
      await Promise.all([stream.ready, plain.ready]);
      await db.pool.query(`INSERT INTO evolving VALUES (1, 'x')`);
      await db.pool.query(`ALTER TABLE evolving ADD COLUMN b int`);
      await db.pool.query(`INSERT INTO evolving VALUES (2, 'y', 7)`);
      await db.pool.query(`ALTER TABLE evolving RENAME COLUMN a TO title`);
      await db.pool.query(`ALTER TABLE evolving ALTER COLUMN b TYPE bigint`);
      await db.pool.query(`ALTER TABLE evolving DROP COLUMN title`);
      await db.pool.query(`UPDATE evolving SET b = 8 WHERE id = 2`);
      await eventually(() => stream.events.length === 7, 'seven events');
      const shown = stream.events.map((event) =>
        event.kind === 'schema' ? ['schema', (event as SchemaChange).columns] : [event.kind, (event as { change: Change }).change.op],
      );
      expect(shown).toEqual([
        ['change', 'insert'],
        ['schema', ['id', 'a', 'b']],
        ['change', 'insert'],
        ['schema', ['id', 'title', 'b']],
        ['schema', ['id', 'title', 'b']],
        ['schema', ['id', 'b']],
        ['change', 'update'],
      ]);
      const update = changesOf(stream.events).at(-1)!;
      expect(update).toMatchObject({ old: { id: 2, b: '7' }, new: { id: 2, b: '8' }, changed: ['b'] });
      await eventually(() => plain.changes.length === 3, 'changes$ sees the three changes only');
      stream.unsubscribe();
      plain.unsubscribe();
    });

    it('keeps per-row order when the application\'s own triggers write the same row, or other watched tables, inside a statement', async () => {
      await db.pool.query(`
        CREATE TABLE notes (id int PRIMARY KEY, v text, normalized text);
        CREATE TABLE note_audit (id serial PRIMARY KEY, note int, what text);
        CREATE FUNCTION normalize_note() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          UPDATE notes SET normalized = lower(NEW.v) WHERE id = NEW.id;
          INSERT INTO note_audit (note, what) VALUES (NEW.id, TG_OP);
          RETURN NULL;
        END $$;
        CREATE TRIGGER a_normalize AFTER INSERT OR UPDATE OF v ON notes FOR EACH ROW EXECUTE FUNCTION normalize_note();`);
      await tide.watch('note_audit');
      const notes = follow(tide, 'notes');
      const both = tide.transactions$(['notes', 'note_audit']);
      const transactions: Array<{ changes: readonly Change[] }> = [];
      const subscription = both.subscribe((tx) => transactions.push(tx));
      await notes.ready;
      await new Promise((resolve) => setTimeout(resolve, 100));
      await db.pool.query(`INSERT INTO notes (id, v) VALUES (1, 'Hello'), (2, 'Two')`);
      await db.pool.query(`UPDATE notes SET v = 'World' WHERE id = 1`);
      await eventually(() => notes.changes.length === 6, 'six changes of notes');
      // Fold every row's changes in order: the result must be the table.
      const folded = new Map<number, Record<string, unknown>>();
      for (const change of notes.changes) {
        if (change.op === 'delete') folded.delete(change.key['id'] as number);
        else folded.set(change.key['id'] as number, change.new!);
      }
      const { rows } = await db.pool.query(`SELECT * FROM notes ORDER BY id`);
      expect([...folded.values()].sort((a, b) => (a['id'] as number) - (b['id'] as number))).toEqual(rows);
      expect(notes.changes.filter((change) => change.key['id'] === 1).map((change) => [change.op, change.new!['v'], change.new!['normalized']])).toEqual([
        ['insert', 'Hello', null],
        ['update', 'Hello', 'hello'],
        ['update', 'World', 'hello'],
        ['update', 'World', 'world'],
      ]);
      await eventually(() => transactions.length === 2, 'two transactions');
      // Within a transaction, a statement's own changes come before what its triggers wrote.
      expect(transactions[0]!.changes.map((change) => `${change.table}:${change.op}`)).toEqual([
        'notes:insert',
        'notes:insert',
        'notes:update',
        'note_audit:insert',
        'notes:update',
        'note_audit:insert',
      ]);
      subscription.unsubscribe();
      notes.unsubscribe();
    });

    it('matches rowId on the server\'s terms: exact bigint keys, a numeric key given as 12.5, a timestamptz key given as a Date', async () => {
      await db.pool.query(`
        CREATE TABLE big_keys (id bigint PRIMARY KEY, v int);
        CREATE TABLE money_keys (id numeric(10,2) PRIMARY KEY, v int);
        CREATE TABLE time_keys (at timestamptz PRIMARY KEY, v int);
        INSERT INTO big_keys VALUES (9007199254740992, 0), (9007199254740993, 0);
        INSERT INTO money_keys VALUES (12.50, 0);
        INSERT INTO time_keys VALUES ('2024-02-29 12:00:00+00', 0);`);
      const exact = follow(tide, 'big_keys', { rowId: '9007199254740993' });
      const money = follow(tide, 'money_keys', { rowId: '12.5' });
      const time = follow(tide, 'time_keys', { rowId: new Date('2024-02-29T12:00:00Z') });
      const states: Array<ReadonlyMap<string, unknown>> = [];
      const state = tide.state$('big_keys').subscribe((map) => states.push(map));
      await Promise.all([exact.ready, money.ready, time.ready]);
      await eventually(() => states.length === 1 && states[0]!.size === 2, 'the first state');
      await db.pool.query(`UPDATE big_keys SET v = v + 1`);
      await db.pool.query(`UPDATE money_keys SET v = 1`);
      await db.pool.query(`UPDATE time_keys SET v = 1`);
      await eventually(() => exact.changes.length === 1 && money.changes.length === 1 && time.changes.length === 1, 'one update each');
      expect(exact.changes[0]!.key).toEqual({ id: '9007199254740993' });
      expect(money.changes[0]!.key).toEqual({ id: '12.50' });
      expect(time.changes[0]!.key).toEqual({ at: new Date('2024-02-29T12:00:00Z') });
      await eventually(() => states.length >= 2, 'state after the update');
      expect([...states.at(-1)!.keys()].sort()).toEqual(['9007199254740992', '9007199254740993']);
      state.unsubscribe();
      for (const followed of [exact, money, time]) followed.unsubscribe();
    });
  });
}

describe('the pool is the one that parses', () => {
  it('a Tide on a pool with its own type parsers delivers values as that pool returns them', async () => {
    const db = await createTestDatabase();
    const types = {
      getTypeParser: (oid: number, format?: string) =>
        oid === 20 ? (text: string) => BigInt(text) : pg.types.getTypeParser(oid, format as 'text'),
    };
    const pool = new pg.Pool({ connectionString: db.url, types });
    const tide = await connect({ pool, logger: quietLogger, pruneInterval: 0 });
    try {
      await db.pool.query(`CREATE TABLE counted (id bigint PRIMARY KEY, n bigint)`);
      const stream = follow(tide, 'counted');
      await stream.ready;
      await db.pool.query(`INSERT INTO counted VALUES (1, 9007199254740993)`);
      await eventually(() => stream.changes.length === 1, 'the insert');
      const { rows } = await pool.query(`SELECT * FROM counted WHERE id = 1`);
      expect(stream.changes[0]!.new).toEqual(rows[0]);
      expect(stream.changes[0]!.new!['n']).toBe(9007199254740993n);
      stream.unsubscribe();
    } finally {
      await tide.close();
      await pool.end();
      await db.drop();
    }
  });
});
