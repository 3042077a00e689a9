import { existsSync } from 'node:fs';
import { inspect, isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startPostgres, type EmbeddedPostgres } from '../../src/embedded.js';
import { connect, type Change, type Tide } from '../../src/index.js';
import { createTestDatabase, eventually, quietLogger, type TestDatabase } from '../helpers.js';

// "Values as pg gives them": every change's new/old/key deep-equal what the Tide's own
// pool returns for SELECT * of that row version, with that pool's type parsers. A
// fast-check property writes random rows across PostgreSQL's common types and compares
// each change with the row read back right after its statement, on the embedded
// PostgreSQL 18 and on Debian's PostgreSQL 15.

const pg15BinDir = process.env.PGTIDE_PG15_BIN ?? '/usr/lib/postgresql/15/bin';

/** fast-check runs per server: the main property, and the one on the pool with custom parsers (PGTIDE_VALUES_RUNS scales both). */
const RUNS = Number(process.env.PGTIDE_VALUES_RUNS ?? 40);
const CUSTOM_RUNS = Math.ceil(RUNS / 3);

type Row = Record<string, unknown>;

// ---------------------------------------------------------------------------------------
// Random values, as PostgreSQL input text (or Buffers / arrays that pg serializes).

const int8Min = -(2n ** 63n);
const int8Max = 2n ** 63n - 1n;

/** One character: the ones that break record/array quoting, and any code point but NUL. */
const char = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('"', "'", ',', '(', ')', '{', '}', '\\', '\n', '\r', '\t', ' ', 'é', '🌊', 'N', 'U', 'L', 'x') },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }).filter((c) => c !== '\0') },
);
const textOf = (maxLength: number) =>
  fc.oneof(
    {
      weight: 1,
      arbitrary: fc
        .constantFrom(
          '',
          ' ',
          'NULL',
          'null',
          '"',
          '""',
          "'",
          ',',
          '()',
          '(a,b)',
          '("a",)',
          '\\',
          '\\\\',
          '\\"',
          'a\nb',
          '{}',
          '{a,"b"}',
          'é',
          '🌊🌊',
          ' leading and trailing ',
        )
        .filter((text) => [...text].length <= maxLength),
    },
    { weight: 3, arbitrary: fc.string({ unit: char, maxLength }) },
  );
const text = fc.oneof({ weight: 8, arbitrary: textOf(30) }, { weight: 1, arbitrary: fc.constant('x,"y"\\'.repeat(700)) });

const int2 = fc.integer({ min: -32768, max: 32767 }).map(String);
const int4 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }).map(String);
const int8 = fc
  .oneof(
    fc.bigInt({ min: int8Min, max: int8Max }),
    fc.constantFrom(2n ** 53n, 2n ** 53n + 1n, -(2n ** 53n) - 1n, int8Min, int8Max),
  )
  .map(String);
const digits = (min: number, max: number) =>
  fc.array(fc.constantFrom(...'0123456789'), { minLength: min, maxLength: max }).map((d) => d.join(''));
const decimal = (intDigits: number, fracDigits: number) =>
  fc
    .tuple(fc.boolean(), digits(1, intDigits), digits(0, fracDigits))
    .map(([negative, whole, fraction]) => `${negative ? '-' : ''}${whole}${fraction ? `.${fraction}` : ''}`);
const numeric = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom('NaN', 'Infinity', '-Infinity', '0', '-0', '0.000', '1.50', '9007199254740993') },
  { weight: 4, arbitrary: decimal(40, 25) },
  {
    weight: 1,
    arbitrary: fc.tuple(decimal(3, 5), fc.integer({ min: -60, max: 60 })).map(([mantissa, exponent]) => `${mantissa}e${exponent}`),
  },
);
const numericFixed = fc.oneof({ weight: 1, arbitrary: fc.constant('NaN') }, { weight: 6, arbitrary: decimal(20, 14) });
const floatText = (value: number) => (Object.is(value, -0) ? '-0' : String(value));
const float4 = fc.oneof(fc.constantFrom(Number.NaN, Infinity, -Infinity, -0, 0), fc.float()).map(floatText);
const float8 = fc.oneof(fc.constantFrom(Number.NaN, Infinity, -Infinity, -0, 0, 0.1, 5e-324), fc.double()).map(floatText);
const bool = fc.boolean().map(String);
const bytea = fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes));
const jsonValueText = fc.json({ maxDepth: 2, stringUnit: 'grapheme' });
const json = fc.oneof(
  { weight: 3, arbitrary: jsonValueText },
  {
    weight: 1,
    arbitrary: fc.constantFrom(' {"b": 1,  "a" : [1, 2.50, -0, 1e400]} ', '{"a": 1, "a": 2}', '"a\\u0000b"', '"\\"(,)\\\\"', '[]', 'null'),
  },
);
const jsonb = fc.oneof(
  { weight: 3, arbitrary: jsonValueText.filter((t) => !t.includes('\\u0000')) },
  { weight: 1, arbitrary: fc.constantFrom('{"b": 1, "a": [1, 2.50, -0, 1e400, 9007199254740993]}', '{"a": 1, "a": 2}', '"\\"(,)\\\\"', '{}') },
);
const pad = (value: number, width: number) => String(value).padStart(width, '0');
const instant = fc.date({ min: new Date('0001-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59Z'), noInvalidDate: true });
const micros = fc.integer({ min: 0, max: 999_999 }).map((us) => pad(us, 6));
const bcYear = fc.integer({ min: 1, max: 4000 }).map((year) => pad(year, 4));
const date = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom('infinity', '-infinity', '0001-01-01', '1970-01-01', '2000-02-29') },
  { weight: 1, arbitrary: bcYear.map((year) => `${year}-03-15 BC`) },
  { weight: 5, arbitrary: instant.map((d) => d.toISOString().slice(0, 10)) },
);
const localTimestamp = fc.tuple(instant, micros).map(([d, us]) => `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 19)}.${us}`);
const timestamp = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom('infinity', '-infinity') },
  { weight: 1, arbitrary: bcYear.map((year) => `${year}-06-15 12:34:56.5 BC`) },
  { weight: 6, arbitrary: localTimestamp },
);
const zone = fc.constantFrom('+00', 'Z', '+05:30', '-08', '+14', '-12:45', ' America/New_York', ' Europe/Paris');
const finiteTimestamptz = fc.tuple(localTimestamp, zone).map(([local, offset]) => `${local}${offset}`);
const timestamptz = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom('infinity', '-infinity') },
  { weight: 1, arbitrary: bcYear.map((year) => `${year}-06-15 12:34:56+00 BC`) },
  { weight: 6, arbitrary: finiteTimestamptz },
);
const clock = fc
  .tuple(fc.integer({ min: 0, max: 23 }), fc.integer({ min: 0, max: 59 }), fc.integer({ min: 0, max: 59 }), micros)
  .map(([h, m, s, us]) => `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}.${us}`);
const time = fc.oneof({ weight: 1, arbitrary: fc.constant('24:00:00') }, { weight: 6, arbitrary: clock });
const timetz = fc
  .tuple(clock, fc.constantFrom('+00', '+05:30', '-08', '+14', '-12:45'))
  .map(([clockText, offset]) => `${clockText}${offset}`);
const interval = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom('0', '1 day', '-1 mon', '00:00:00.000001', '-178000000 years', 'P1Y2M3DT4H5M6.5S', '1 mon -1 day') },
  {
    weight: 5,
    arbitrary: fc
      .tuple(
        fc.integer({ min: -1000, max: 1000 }),
        fc.integer({ min: -11, max: 11 }),
        fc.integer({ min: -1000, max: 1000 }),
        fc.boolean(),
        fc.integer({ min: 0, max: 200 }),
        fc.integer({ min: 0, max: 59 }),
        fc.integer({ min: 0, max: 59 }),
        micros,
      )
      .map(([y, mon, d, negative, h, m, s, us]) => `${y} years ${mon} mons ${d} days ${negative ? '-' : ''}${h}:${pad(m, 2)}:${pad(s, 2)}.${us}`),
  },
);
const uuid = fc.uuid();
const inet = fc.oneof(
  fc.ipV4(),
  fc.ipV6(),
  fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 })).map(([ip, bits]) => `${ip}/${bits}`),
  fc.constantFrom('::1', '::ffff:1.2.3.4', '2001:db8::/32', '0.0.0.0/0'),
);
const moodLabels = ['sad', 'ok', 'happy', 'with space', 'a"b,c(d)\\e'] as const;
const mood = fc.constantFrom(...moodLabels);
const posint = fc.integer({ min: 0, max: 2 ** 31 - 1 }).map(String);
const label = textOf(60);
const nullable = <T>(arbitrary: fc.Arbitrary<T>, freq = 5) => fc.option(arbitrary, { nil: null, freq });
const arrayOf = <T>(element: fc.Arbitrary<T>) => fc.array(nullable(element, 4), { maxLength: 4 });
const pair = fc.record({ label: nullable(text), n: nullable(numeric), tags: nullable(arrayOf(text)), at: nullable(finiteTimestamptz) });
const int8Array = fc.oneof(
  { weight: 3, arbitrary: arrayOf(int8) },
  {
    weight: 1,
    arbitrary: fc
      .integer({ min: 1, max: 3 })
      .chain((width) => fc.array(fc.array(nullable(int8, 4), { minLength: width, maxLength: width }), { minLength: 1, maxLength: 3 })),
  },
);

/** A column of the test table: its SQL type, random values, and how a value is written. */
interface ColumnSpec {
  readonly name: string;
  readonly type: string;
  readonly value: fc.Arbitrary<unknown>;
  /** The SQL expression for a value; `param` adds a parameter and returns its placeholder. */
  readonly sql?: (value: unknown, param: (value: unknown) => string) => string;
}

const columnSpecs: readonly ColumnSpec[] = [
  { name: 'c_int2', type: 'int2', value: int2 },
  { name: 'c_int4', type: 'int4', value: int4 },
  { name: 'c_int8', type: 'int8', value: int8 },
  { name: 'c_numeric', type: 'numeric', value: numeric },
  { name: 'c_numeric_fixed', type: 'numeric(30,10)', value: numericFixed },
  { name: 'c_float4', type: 'float4', value: float4 },
  { name: 'c_float8', type: 'float8', value: float8 },
  { name: 'c_bool', type: 'bool', value: bool },
  { name: 'c_text', type: 'text', value: text },
  { name: 'c_varchar', type: 'varchar(20)', value: textOf(20) },
  { name: 'c_char', type: 'char(5)', value: textOf(5) },
  { name: 'c_bytea', type: 'bytea', value: bytea },
  { name: 'c_json', type: 'json', value: json },
  { name: 'c_jsonb', type: 'jsonb', value: jsonb },
  { name: 'c_date', type: 'date', value: date },
  { name: 'c_timestamp', type: 'timestamp', value: timestamp },
  { name: 'c_timestamptz', type: 'timestamptz', value: timestamptz },
  { name: 'c_time', type: 'time', value: time },
  { name: 'c_timetz', type: 'timetz', value: timetz },
  { name: 'c_interval', type: 'interval', value: interval },
  { name: 'c_uuid', type: 'uuid', value: uuid },
  { name: 'c_inet', type: 'inet', value: inet },
  { name: 'c_mood', type: 'mood', value: mood },
  { name: 'c_posint', type: 'posint', value: posint },
  { name: 'c_label', type: 'label', value: label },
  {
    name: 'c_pair',
    type: 'pair',
    value: pair,
    sql: (value, param) => {
      if (value === null) return 'NULL::pair';
      const fields = value as { label: unknown; n: unknown; tags: unknown; at: unknown };
      return `ROW(${param(fields.label)}::text, ${param(fields.n)}::numeric, ${param(fields.tags)}::text[], ${param(fields.at)}::timestamptz)::pair`;
    },
  },
  { name: 'a_int8', type: 'int8[]', value: int8Array },
  { name: 'a_numeric', type: 'numeric[]', value: arrayOf(numeric) },
  { name: 'a_text', type: 'text[]', value: arrayOf(text) },
  { name: 'a_date', type: 'date[]', value: arrayOf(date) },
  { name: 'a_timestamptz', type: 'timestamptz[]', value: arrayOf(timestamptz) },
  { name: 'a_bytea', type: 'bytea[]', value: arrayOf(bytea) },
  { name: 'a_jsonb', type: 'jsonb[]', value: arrayOf(jsonb) },
];
const typeOf = new Map<string, string>([['id', 'int8'], ['rev', 'int4'], ...columnSpecs.map((c) => [c.name, c.type] as [string, string])]);

const schemaDdl = `
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'with space', 'a"b,c(d)\\e');
  CREATE DOMAIN posint AS int4 CHECK (VALUE >= 0);
  CREATE DOMAIN label AS text CHECK (length(VALUE) <= 60);
  CREATE TYPE pair AS (label text, n numeric, tags text[], at timestamptz);
  CREATE TABLE vals (id int8 PRIMARY KEY, rev int4 NOT NULL, ${columnSpecs.map((c) => `${c.name} ${c.type}`).join(', ')});
  CREATE TABLE vals_custom (LIKE vals INCLUDING ALL);
  CREATE TABLE big (id int8 PRIMARY KEY, v text);
  CREATE TABLE big_state (id int8 PRIMARY KEY, v text);
  CREATE TABLE typed (id int8 PRIMARY KEY, at timestamptz NOT NULL, data bytea NOT NULL, amount numeric, note text);
  CREATE TABLE typed_state (LIKE typed INCLUDING ALL);
  CREATE TABLE every_type (LIKE vals INCLUDING ALL);
  CREATE TABLE writers (LIKE vals INCLUDING ALL);`;

const fullRow = fc.record(Object.fromEntries(columnSpecs.map((c) => [c.name, nullable(c.value)])) as Record<string, fc.Arbitrary<unknown>>);
const partialRow = fc.record(Object.fromEntries(columnSpecs.map((c) => [c.name, nullable(c.value)])) as Record<string, fc.Arbitrary<unknown>>, {
  requiredKeys: [],
});
const rowId = int8;

/** One property run: rows to insert, then updates and deletes of them, in one transaction or statement by statement. */
const history = fc.record({
  rows: fc.uniqueArray(fc.record({ id: rowId, values: fullRow }), { minLength: 1, maxLength: 3, selector: (row) => row.id }),
  steps: fc.array(
    fc.record({
      pick: fc.nat(),
      remove: fc.boolean().chain((maybe) => (maybe ? fc.boolean() : fc.constant(false))), // a delete one step in four
      values: partialRow,
    }),
    { maxLength: 5 },
  ),
  transaction: fc.boolean(),
});
type History = typeof history extends fc.Arbitrary<infer T> ? T : never;

/** The SQL expressions (and parameters) for some column values. */
function expressions(values: Record<string, unknown>, params: unknown[]): Array<[string, string]> {
  const param = (value: unknown) => `$${params.push(value)}`;
  return columnSpecs
    .filter((c) => c.name in values)
    .map((c) => [c.name, c.sql ? c.sql(values[c.name], param) : `${param(values[c.name])}::${c.type}`]);
}

// ---------------------------------------------------------------------------------------
// Comparing what pgtide delivered with what the pool read back.

const show = (value: unknown) => inspect(value, { depth: 6, breakLength: Infinity, maxStringLength: 200 });

/** Each column whose value differs: `where.column (type): pgtide gave X, pg gave Y`. */
function columnDifferences(where: string, actual: Row | undefined, expected: Row | undefined): string[] {
  if (actual === undefined || expected === undefined) {
    return actual === expected ? [] : [`${where}: pgtide gave ${show(actual)}, pg gave ${show(expected)}`];
  }
  const differences: string[] = [];
  for (const column of new Set([...Object.keys(expected), ...Object.keys(actual)])) {
    if (!isDeepStrictEqual(actual[column], expected[column])) {
      differences.push(`${where}.${column} (${typeOf.get(column) ?? '?'}): pgtide gave ${show(actual[column])}, pg gave ${show(expected[column])}`);
    }
  }
  return differences;
}

interface Expected {
  readonly op: 'insert' | 'update' | 'delete';
  readonly key: Row;
  readonly new?: Row;
  readonly old?: Row;
}

function expectChange(change: Change, expected: Expected, context: string): void {
  const differences = [
    ...(change.op === expected.op ? [] : [`op: pgtide gave ${change.op}, expected ${expected.op}`]),
    ...columnDifferences('key', change.key, expected.key),
    ...columnDifferences('new', change.new, expected.new),
    ...columnDifferences('old', change.old, expected.old),
  ];
  expect(differences, context).toEqual([]);
  expect({ op: change.op, key: change.key, new: change.new, old: change.old }, context).toEqual(expected);
}

/** A live stream of a table's changes (from the beginning of its log: nothing is missed). */
function collect(tide: Tide, table: string, options: Parameters<Tide['changes$']>[1] = {}) {
  const changes: Change[] = [];
  const state: { error?: unknown } = {};
  const subscription = tide.changes$(table, { from: 'beginning', ...options }).subscribe({
    next: (change) => changes.push(change as Change),
    error: (error: unknown) => (state.error = error),
  });
  const until = (count: number, what: string) =>
    eventually(() => {
      if (state.error) throw state.error;
      return changes.length >= count;
    }, what);
  return { changes, state, until, unsubscribe: () => subscription.unsubscribe() };
}

/**
 * Writes one history to `table` through `pool` (the Tide's pool), reading the row back
 * after every statement, and checks that the Tide's stream delivered exactly those rows.
 */
class Harness {
  /** The last read-back of each row in the table (empty between runs). */
  readonly model = new Map<string, Row>();
  /** How many changes the stream must have delivered so far. */
  expectedCount = 0;

  constructor(
    readonly pool: pg.Pool,
    readonly table: string,
    readonly stream: ReturnType<typeof collect>,
  ) {}

  /**
   * Waits until the stream has delivered `count` changes, and fails if it delivered more
   * or fewer (after 10 s). Either way the count is resynchronised first, so that a
   * failure does not spill into the next run (and fast-check shrinks to the real cause).
   */
  async delivered(count: number, what: string): Promise<void> {
    try {
      await this.stream.until(count, what);
    } catch (error) {
      const have = this.stream.changes.length;
      this.expectedCount = have;
      throw new Error(`the stream delivered ${count - have} change(s) fewer than written (${what})`, { cause: error });
    }
    const extra = this.stream.changes.slice(count);
    if (extra.length > 0) {
      this.expectedCount = this.stream.changes.length;
      throw new Error(`the stream delivered ${extra.length} change(s) more than written: ${show(extra.map((c) => [c.op, c.key]))}`);
    }
  }

  async run(run: History): Promise<void> {
    // Whatever happened in a previous (failed, shrinking) run, start from an empty table
    // and a settled stream.
    if (this.model.size > 0) {
      await this.pool.query(`DELETE FROM ${this.table} WHERE id = ANY ($1::int8[])`, [[...this.model.keys()]]);
      this.expectedCount += this.model.size;
      this.model.clear();
    }
    await this.delivered(this.expectedCount, 'the previous run\'s changes');
    const start = this.expectedCount;
    const expected: Expected[] = [];
    const model = new Map(this.model);
    const client = run.transaction ? await this.pool.connect() : undefined;
    const db: pg.Pool | pg.PoolClient = client ?? this.pool;
    const table = this.table;
    const readBack = async (id: string): Promise<Row | undefined> => (await db.query(`SELECT * FROM ${table} WHERE id = $1`, [id])).rows[0];
    const record = (change: Expected) => {
      expected.push(change);
      if (!client) this.expectedCount += 1; // statement by statement: each one committed
    };
    const commitModel = () => {
      this.model.clear();
      for (const [id, row] of model) this.model.set(id, row);
    };
    try {
      if (client) await client.query('BEGIN');
      for (const row of run.rows) {
        const params: unknown[] = [row.id];
        const columns = expressions(row.values, params);
        await db.query(
          `INSERT INTO ${table} (id, rev, ${columns.map(([name]) => name).join(', ')}) VALUES ($1, 0, ${columns.map(([, sql]) => sql).join(', ')})`,
          params,
        );
        const inserted = (await readBack(row.id))!;
        model.set(row.id, inserted);
        record({ op: 'insert', key: { id: inserted['id'] }, new: inserted });
        if (!client) commitModel();
      }
      const ids = run.rows.map((row) => row.id);
      for (const step of run.steps) {
        const alive = ids.filter((id) => model.has(id));
        if (alive.length === 0) break;
        const id = alive[step.pick % alive.length]!;
        const before = model.get(id)!;
        if (step.remove) {
          await db.query(`DELETE FROM ${table} WHERE id = $1`, [id]);
          model.delete(id);
          record({ op: 'delete', key: { id: before['id'] }, old: before });
        } else {
          const params: unknown[] = [id];
          // rev always moves, so every update is a change whatever the random values.
          const sets = [['rev', 'rev + 1'], ...expressions(step.values, params)].map(([name, sql]) => `${name} = ${sql}`);
          await db.query(`UPDATE ${table} SET ${sets.join(', ')} WHERE id = $1`, params);
          const after = (await readBack(id))!;
          model.set(id, after);
          record({ op: 'update', key: { id: after['id'] }, new: after, old: before });
        }
        if (!client) commitModel();
      }
      // The rows still there go too, so that every run starts from an empty table and a
      // counterexample stands on its own.
      for (const id of ids.filter((id) => model.has(id))) {
        const before = model.get(id)!;
        await db.query(`DELETE FROM ${table} WHERE id = $1`, [id]);
        model.delete(id);
        record({ op: 'delete', key: { id: before['id'] }, old: before });
        if (!client) commitModel();
      }
      if (client) {
        await client.query('COMMIT');
        this.expectedCount += expected.length;
        commitModel();
      }
    } catch (error) {
      if (client) await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      client?.release();
    }

    await this.delivered(start + expected.length, `${expected.length} changes of ${table}`);
    const delivered = this.stream.changes.slice(start, start + expected.length);
    delivered.forEach((change, index) => expectChange(change, expected[index]!, `change ${index + 1} of ${expected.length} (${expected[index]!.op})`));
  }
}

// ---------------------------------------------------------------------------------------
// Parsers the application registered: globally (pg.types) and on one pool (`types`).

/** A numeric parser of the application's own: keeps the text, in its own class. */
class Decimal {
  constructor(readonly digits: string) {}
}
const customTypes = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === 20) return (text: string) => BigInt(text);
    if (oid === 1700) return (text: string) => new Decimal(text);
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

/** Application parsers registered with pg.types.setTypeParser for the enum and the composite. */
async function registerGlobalParsers(pool: pg.Pool): Promise<() => void> {
  const { rows } = await pool.query<{ mood: number; pair: number }>(`SELECT 'mood'::regtype::oid::int AS mood, 'pair'::regtype::oid::int AS pair`);
  const { mood: moodOid, pair: pairOid } = rows[0]!;
  pg.types.setTypeParser(moodOid, (value: string) => ({ mood: value }));
  pg.types.setTypeParser(pairOid, (value: string) => ({ pairText: value }));
  return () => {
    pg.types.setTypeParser(moodOid, (value: string) => value);
    pg.types.setTypeParser(pairOid, (value: string) => value);
  };
}

// ---------------------------------------------------------------------------------------

interface Server {
  readonly url: string;
  stop(): Promise<void>;
}

function valueTests(start: () => Promise<Server>, expectedMajor: number): void {
  let server: Server;
  let pool: pg.Pool;
  let customPool: pg.Pool;
  let tide: Tide;
  let customTide: Tide;
  let unregister: () => void = () => undefined;
  const streams: Array<{ unsubscribe(): void }> = [];

  beforeAll(async () => {
    server = await start();
    pool = new pg.Pool({ connectionString: server.url, max: 6 });
    customPool = new pg.Pool({ connectionString: server.url, max: 4, types: customTypes });
    await pool.query(schemaDdl);
    unregister = await registerGlobalParsers(pool);
    tide = await connect({ pool, logger: quietLogger, pruneInterval: 0 });
    customTide = await connect({ pool: customPool, logger: quietLogger, pruneInterval: 0 });
    for (const table of ['vals', 'big', 'big_state', 'typed', 'typed_state', 'every_type', 'writers']) await tide.watch(table);
    await customTide.watch('vals_custom');
  });
  afterAll(async () => {
    streams.forEach((stream) => stream.unsubscribe());
    await tide?.close();
    await customTide?.close();
    await pool?.end();
    await customPool?.end();
    unregister();
    await server?.stop();
  });

  const follow = (on: Tide, table: string, options: Parameters<Tide['changes$']>[1] = {}) => {
    const stream = collect(on, table, options);
    streams.push(stream);
    return stream;
  };

  it(`runs on PostgreSQL ${expectedMajor}`, async () => {
    const { rows } = await pool.query(`SHOW server_version_num`);
    expect(Math.floor(Number(rows[0].server_version_num) / 10000)).toBe(expectedMajor);
  });

  it('property: every change of random rows of every type deep-equals the pool\'s SELECT * of that row version', async () => {
    const harness = new Harness(pool, 'vals', follow(tide, 'vals'));
    await fc.assert(
      fc.asyncProperty(history, (run) => harness.run(run)),
      { numRuns: RUNS },
    );
  });

  it('property, pool with a `types` option (int8 as BigInt, numeric as a class): changes carry those values, as its SELECT *', async () => {
    const harness = new Harness(customPool, 'vals_custom', follow(customTide, 'vals_custom'));
    // Some hand-picked values first, so the custom parsers certainly meet non-null values.
    const values = { c_int8: '9007199254740993', c_numeric: '1.50', a_int8: ['1', null], c_numeric_fixed: 'NaN' };
    await harness.run({ rows: [{ id: '-9223372036854775808', values }], steps: [], transaction: false });
    const first = harness.stream.changes[0]!;
    expect(first.key).toEqual({ id: -9223372036854775808n });
    expect(first.new).toMatchObject({ c_int8: 9007199254740993n, c_numeric: new Decimal('1.50'), c_numeric_fixed: new Decimal('NaN') });
    expect((first.new as Row)['c_numeric']).toBeInstanceOf(Decimal);
    await fc.assert(
      fc.asyncProperty(history, (run) => harness.run(run)),
      { numRuns: CUSTOM_RUNS },
    );
  });

  it('keys are exact: 9007199254740992 and 9007199254740993 are two keys, and rowId follows exactly one', async () => {
    const all = follow(tide, 'big');
    const one = follow(tide, 'big', { rowId: '9007199254740993' });
    await pool.query(`INSERT INTO big VALUES (9007199254740992, 'a'), (9007199254740993, 'b')`);
    await pool.query(`UPDATE big SET v = 'b2' WHERE id = 9007199254740993`);
    await pool.query(`UPDATE big SET v = 'a2' WHERE id = 9007199254740992`);
    await pool.query(`UPDATE big SET v = 'b3' WHERE id = 9007199254740993`);
    await all.until(5, 'the inserts and updates');
    expect(all.changes.map((change) => [change.op, change.key])).toEqual([
      ['insert', { id: '9007199254740992' }],
      ['insert', { id: '9007199254740993' }],
      ['update', { id: '9007199254740993' }],
      ['update', { id: '9007199254740992' }],
      ['update', { id: '9007199254740993' }],
    ]);
    const { rows } = await pool.query(`SELECT * FROM big ORDER BY id`);
    expect(all.changes.at(-1)!.new).toEqual(rows[1]);
    expect(all.changes.at(-2)!.new).toEqual(rows[0]);
    await one.until(3, 'the row\'s insert and updates');
    expect(one.changes.map((change) => [change.op, change.key, (change.new as Row)['v']])).toEqual([
      ['insert', { id: '9007199254740993' }, 'b'],
      ['update', { id: '9007199254740993' }, 'b2'],
      ['update', { id: '9007199254740993' }, 'b3'],
    ]);
    expect(all.changes).toHaveLength(5);
  });

  it('rows of one bulk statement that repeat a value get their own Date objects; a column named __proto__ is an own property', async () => {
    await pool.query(`CREATE TABLE repeated (id int PRIMARY KEY, at timestamptz NOT NULL, "__proto__" text, tags text[])`);
    await tide.watch('repeated');
    const stream = follow(tide, 'repeated');
    await pool.query(`INSERT INTO repeated SELECT g, '2026-01-02 03:04:05.678+00', 'proto', '{a,b}' FROM generate_series(1, 3) g`);
    await stream.until(3, 'the three inserts');
    const { rows } = await pool.query(`SELECT * FROM repeated ORDER BY id`);
    const values = stream.changes.map((change) => change.new as Row);
    values.forEach((row, index) => expect(row).toEqual(rows[index]));
    expect(values[0]!['at']).toBeInstanceOf(Date);
    expect(values[0]!['at']).not.toBe(values[1]!['at']);
    (values[0]!['at'] as Date).setTime(0);
    expect((values[1]!['at'] as Date).getTime()).toBe(Date.parse('2026-01-02T03:04:05.678Z'));
    expect(values[0]!['tags']).not.toBe(values[1]!['tags']);
    expect(Object.getPrototypeOf(values[2])).toBe(Object.prototype);
    expect(Object.keys(values[2]!)).toEqual(['id', 'at', '__proto__', 'tags']);
    expect(Object.getOwnPropertyDescriptor(values[2], '__proto__')?.value).toBe('proto');
  });

  it('keys are exact in state$: two rows above 2^53 are two entries, live and in the initial snapshot, equal to SELECT *', async () => {
    const live: Array<ReadonlyMap<string, Row>> = [];
    const first = tide.state$('big_state').subscribe((rows) => live.push(rows as ReadonlyMap<string, Row>));
    streams.push(first);
    await eventually(() => live.length > 0, 'the first (empty) state');
    await pool.query(`INSERT INTO big_state VALUES (9007199254740992, 'a')`);
    await pool.query(`INSERT INTO big_state VALUES (9007199254740993, 'b')`);
    const { rows } = await pool.query(`SELECT * FROM big_state ORDER BY id`);
    const table = new Map(rows.map((row: Row) => [String(row['id']), row]));
    await eventually(() => live.at(-1)!.size === 2, 'two rows followed live');
    expect(new Map(live.at(-1)!)).toEqual(table);

    const snapshots: Array<ReadonlyMap<string, Row>> = [];
    const state: { error?: unknown } = {};
    const second = tide.state$('big_state').subscribe({
      next: (rows) => snapshots.push(rows as ReadonlyMap<string, Row>),
      error: (error: unknown) => (state.error = error),
    });
    streams.push(second);
    await eventually(() => snapshots.length > 0 || state.error !== undefined, 'the initial snapshot');
    expect(state.error).toBeUndefined();
    expect([...snapshots[0]!.keys()].sort()).toEqual(['9007199254740992', '9007199254740993']);
    expect(new Map(snapshots[0]!)).toEqual(table);
  });

  const typedSchema = z.object({
    id: z.string(),
    at: z.date(),
    data: z.instanceof(Buffer),
    amount: z.string().nullable(),
    note: z.string().nullable(),
  });
  const typedRows = fc.uniqueArray(
    fc.record({
      id: int8,
      at: finiteTimestamptz,
      data: bytea,
      amount: nullable(numeric),
      note: nullable(text),
    }),
    { minLength: 1, maxLength: 6, selector: (row) => row.id },
  );

  it('the zod schema option validates the values as pg gives them (z.string() for int8, z.date() for timestamptz, z.instanceof(Buffer) for bytea)', async () => {
    const typed = follow(tide, 'typed', { schema: typedSchema });
    const rows = fc.sample(typedRows, { numRuns: 1, seed: 42 })[0]!;
    let count = 0;
    for (const row of rows) {
      await pool.query(`INSERT INTO typed VALUES ($1, $2, $3, $4, $5)`, [row.id, row.at, row.data, row.amount, row.note]);
      const { rows: readBack } = await pool.query(`SELECT * FROM typed WHERE id = $1`, [row.id]);
      count += 1;
      await typed.until(count, 'the validated insert');
      expectChange(typed.changes[count - 1]!, { op: 'insert', key: { id: readBack[0].id }, new: readBack[0] }, `typed row ${row.id}`);
      expect(typedSchema.parse(readBack[0])).toEqual(readBack[0]);
    }
  });

  it('state$ initial snapshot rows (with and without a zod schema) equal the pool\'s SELECT * rows', async () => {
    const rows = fc.sample(typedRows, { numRuns: 1, seed: 7 })[0]!;
    for (const row of rows) {
      await pool.query(`INSERT INTO typed_state VALUES ($1, $2, $3, $4, $5)`, [row.id, row.at, row.data, row.amount, row.note]);
    }
    const { rows: readBack } = await pool.query(`SELECT * FROM typed_state`);
    const table = new Map(readBack.map((row: Row) => [String(row['id']), row]));

    const first = async (options: Parameters<Tide['state$']>[1]) => {
      const outcome: { rows?: ReadonlyMap<string, Row>; error?: unknown } = {};
      const subscription = tide.state$('typed_state', options).subscribe({
        next: (value) => (outcome.rows ??= value as ReadonlyMap<string, Row>),
        error: (error: unknown) => (outcome.error = error),
      });
      streams.push(subscription);
      await eventually(() => outcome.rows !== undefined || outcome.error !== undefined, 'the initial snapshot');
      subscription.unsubscribe();
      return outcome;
    };
    const plain = await first({});
    const snapshotDifferences = [...table].flatMap(([key, row]) => columnDifferences(`state['${key}']`, plain.rows?.get(key), row));
    expect(snapshotDifferences.slice(0, 10)).toEqual([]);
    expect(new Map(plain.rows)).toEqual(table);

    const validated = await first({ schema: typedSchema });
    expect(validated.error).toBeUndefined();
    expect(new Map(validated.rows)).toEqual(table);
  });

  it('state$ initial snapshot of the table of every type equals the pool\'s SELECT * (one difference per column shown)', async () => {
    // Rows of every type, a few written here so that the test stands alone.
    const rows = fc.sample(fc.uniqueArray(fc.record({ id: rowId, values: fullRow }), { minLength: 8, maxLength: 8, selector: (r) => r.id }), {
      numRuns: 1,
      seed: 3,
    })[0]!;
    await pool.query(`DELETE FROM every_type`);
    for (const row of rows) {
      const params: unknown[] = [row.id];
      const columns = expressions(row.values, params);
      await pool.query(
        `INSERT INTO every_type (id, rev, ${columns.map(([name]) => name).join(', ')}) VALUES ($1, 0, ${columns.map(([, sql]) => sql).join(', ')})`,
        params,
      );
    }
    const { rows: readBack } = await pool.query(`SELECT * FROM every_type`);
    const table = new Map(readBack.map((row: Row) => [String(row['id']), row]));
    const outcome: { rows?: ReadonlyMap<string, Row>; error?: unknown } = {};
    const subscription = tide.state$('every_type').subscribe({
      next: (value) => (outcome.rows ??= value as ReadonlyMap<string, Row>),
      error: (error: unknown) => (outcome.error = error),
    });
    streams.push(subscription);
    await eventually(() => outcome.rows !== undefined || outcome.error !== undefined, 'the initial snapshot');
    subscription.unsubscribe();
    expect(outcome.error).toBeUndefined();
    const byColumn = new Map<string, string>();
    for (const [key, row] of table) {
      const got = outcome.rows!.get(key);
      if (!got) byColumn.set(`missing ${key}`, `state has no entry '${key}' (its keys: ${[...outcome.rows!.keys()].slice(0, 8).join(', ')})`);
      for (const difference of columnDifferences(`state['${key}']`, got ?? {}, row)) {
        const column = /^state\['[^']*'\]\.(\w+)/.exec(difference)?.[1] ?? difference;
        if (!byColumn.has(column)) byColumn.set(column, difference);
      }
    }
    expect([...byColumn.values()]).toEqual([]);
  });

  // Another application writes with its own session settings (psql with PGDATESTYLE, a
  // JDBC or ORM connection with its own TimeZone, ...); the Tide's pool reads with the
  // server defaults. What pgtide delivers must still be what that pool reads.
  it.each([
    { id: 1, name: 'DateStyle SQL, DMY', settings: `SET DateStyle = 'SQL, DMY'` },
    { id: 2, name: 'DateStyle German', settings: `SET DateStyle = 'German'` },
    { id: 3, name: 'IntervalStyle sql_standard', settings: `SET IntervalStyle = 'sql_standard'` },
    { id: 4, name: 'extra_float_digits 0', settings: `SET extra_float_digits = 0` },
    { id: 5, name: 'bytea_output escape', settings: `SET bytea_output = 'escape'` },
    { id: 6, name: 'TimeZone Asia/Kathmandu', settings: `SET TimeZone = 'Asia/Kathmandu'` },
  ])('a writer session with $name: values still as the Tide\'s pool reads them', async ({ id, settings }) => {
    const stream = follow(tide, 'writers', { rowId: String(id) });
    const writer = new pg.Client({ connectionString: server.url });
    await writer.connect();
    try {
      await writer.query(settings);
      await writer.query(
        `INSERT INTO writers (id, rev, c_float8, c_float4, a_numeric, c_bytea, a_bytea, c_date, c_timestamp, c_timestamptz, c_time, c_timetz,
                              c_interval, a_date, a_timestamptz, c_jsonb, c_pair)
         VALUES ($1, 0, 0.1::float8 + 0.2::float8, '1.0000001'::float4, '{1.50,NaN}', '\\x00ff27'::bytea, ARRAY['\\x5c22'::bytea],
                 '2024-03-15', '2024-03-15 13:14:15.5', '2024-03-15 13:14:15.5+00', '13:14:15.5', '10:00:00+05:30',
                 '1 year 2 mons 3 days 04:05:06', '{2024-03-15,2000-01-02}', '{"2024-03-15 13:14:15+00"}', '{"at": 0.30000000000000004}',
                 ROW('x', 1.5, '{a}', '2024-03-15 13:14:15+00'))`,
        [id],
      );
    } finally {
      await writer.end();
    }
    const { rows } = await pool.query(`SELECT * FROM writers WHERE id = $1`, [id]);
    await stream.until(1, 'the insert of the writer with other settings');
    expectChange(stream.changes[0]!, { op: 'insert', key: { id: rows[0].id }, new: rows[0] }, `row written after ${settings}`);
  });
}

describe('values as pg gives them, embedded PostgreSQL 18', () => {
  valueTests(async () => {
    const db: TestDatabase = await createTestDatabase();
    return { url: db.url, stop: () => db.drop() };
  }, 18);
});

describe.runIf(existsSync(`${pg15BinDir}/postgres`))('values as pg gives them, Debian PostgreSQL 15', () => {
  valueTests(async () => {
    const server: EmbeddedPostgres = await startPostgres({ binDir: pg15BinDir, settings: { fsync: 'off' } });
    return { url: server.connectionString, stop: () => server.destroy() };
  }, 15);
});
