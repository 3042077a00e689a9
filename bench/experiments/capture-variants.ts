// Attribution experiments behind the recommendations in bench/README.md: what each part
// of pgtide's capture and log format costs, measured as variants side by side on one
// embedded server. Not part of `npm run bench`.
//
//   npx tsx bench/experiments/capture-variants.ts [--only=bulk,update,single,read]
//
// Every variant is a table of the benchmark's definition with its own statement-level
// trigger writing to its own log. Figures: rows/s (median of interleaved repetitions,
// paired ratio to the unwatched table) and server CPU per row (robust when other
// processes compete for the CPU).
import pg from 'pg';
import Cursor from 'pg-cursor';
import { startPostgres } from '../../src/embedded.js';
import { cpuSince, postmasterPid, processCpuMs, serverCpu } from '../lib/cpu.js';
import { bareCaptureSql, connectTide, createTableSql, insertRangeSql, tableColumns } from '../lib/db.js';
import { median, nowMs } from '../lib/stats.js';

const only = process.argv.find((arg) => arg.startsWith('--only='))?.slice(7).split(',');
const wanted = (name: string) => !only || only.includes(name);

const server = await startPostgres({ settings: { wal_level: 'logical', max_replication_slots: 10, max_wal_senders: 10 } });
const postmaster = postmasterPid(server.dataDir);
const client = new pg.Client({ connectionString: server.connectionString });
await client.connect();
const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
const tide = await connectTide(server.connectionString);

/** The pgtide log's columns, with a choice of row type and indexes. */
function logSql(name: string, rowType: 'jsonb' | 'json', indexes: 'two' | 'one'): string {
  const id = indexes === 'two' ? 'id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY' : 'id bigint GENERATED ALWAYS AS IDENTITY';
  return `CREATE TABLE ${name} (${id}, pos bigint NOT NULL, txid xid8 NOT NULL, relid oid NOT NULL, op "char" NOT NULL,
    changed text[], new ${rowType}, old ${rowType}, written_at timestamptz NOT NULL
    ${indexes === 'one' ? ', PRIMARY KEY (relid, pos, id)' : ''});
    ${indexes === 'two' ? `CREATE INDEX ON ${name} (relid, pos, id);` : ''}`;
}

/** A trigger function with pgtide's position computation around `body`. */
function positioned(name: string, body: string): string {
  return `CREATE FUNCTION ${name}() RETURNS trigger LANGUAGE plpgsql AS $f$
    DECLARE xid xid8 := pg_current_xact_id(); position bigint; written timestamptz := clock_timestamp();
    BEGIN
      position := greatest(pg_snapshot_xmax(pg_current_snapshot())::text::bigint, xid::text::bigint + 1);
      ${body};
      RETURN NULL;
    END $f$`;
}

const report = (title: string, rates: Record<string, number[]>, cpuMs: Record<string, number>, rows: Record<string, number>) => {
  console.log(`\n${title}`);
  console.log('variant'.padEnd(26), 'rows/s'.padStart(9), 'vs unwatched'.padStart(13), 'vs pgtide'.padStart(10), 'server CPU µs/row'.padStart(18));
  for (const [name, values] of Object.entries(rates)) {
    const paired = (base: string) => median(values.map((value, index) => value / rates[base]![index]!));
    console.log(
      name.padEnd(26),
      String(Math.round(median(values))).padStart(9),
      paired('unwatched').toFixed(2).padStart(13),
      paired('pgtide').toFixed(2).padStart(10),
      ((cpuMs[name]! * 1000) / rows[name]!).toFixed(2).padStart(18),
    );
  }
};

if (wanted('bulk')) {
  // INSERT ... SELECT of 10k rows: what the log format costs per row.
  await client.query(`CREATE SCHEMA vb;
    ${logSql('vb.log_jsonb2', 'jsonb', 'two')} ${logSql('vb.log_json2', 'json', 'two')}
    ${logSql('vb.log_jsonb1', 'jsonb', 'one')} ${logSql('vb.log_json1', 'json', 'one')}
    ${positioned('vb.cap_jsonb2', `INSERT INTO vb.log_jsonb2 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', to_jsonb(n), written FROM new_rows n`)};
    ${positioned('vb.cap_json2', `INSERT INTO vb.log_json2 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', row_to_json(n), written FROM new_rows n`)};
    ${positioned('vb.cap_jsonb1', `INSERT INTO vb.log_jsonb1 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', to_jsonb(n), written FROM new_rows n`)};
    ${positioned('vb.cap_json1', `INSERT INTO vb.log_json1 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', row_to_json(n), written FROM new_rows n`)};`);
  const variants: Record<string, string | null> = {
    unwatched: null,
    pgtide: 'pgtide',
    'bare trigger+log': 'bare',
    'jsonb, 2 indexes (=pgtide log)': 'vb.cap_jsonb2',
    'json, 2 indexes': 'vb.cap_json2',
    'jsonb, 1 index': 'vb.cap_jsonb1',
    'json, 1 index': 'vb.cap_json1',
  };
  const tables = new Map<string, string>();
  let index = 0;
  for (const [name, capture] of Object.entries(variants)) {
    const table = `vb.t${index++}`;
    tables.set(name, table);
    await client.query(createTableSql(table));
    if (capture === 'pgtide') await tide.watch(table);
    else if (capture === 'bare') await client.query(bareCaptureSql(table, table.replace('.', '_')));
    else if (capture) await client.query(`CREATE TRIGGER cap AFTER INSERT ON ${table} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ${capture}()`);
  }
  const rates: Record<string, number[]> = {};
  const cpuMs: Record<string, number> = {};
  const rows: Record<string, number> = {};
  for (let round = 0; round < 20; round += 1) {
    const names = Object.keys(variants);
    for (const name of names.map((_, k) => names[(k + round) % names.length]!)) {
      const cpu = processCpuMs(pid);
      const start = nowMs();
      await client.query(insertRangeSql(tables.get(name)!), [round * 10_000 + 1, (round + 1) * 10_000]);
      (rates[name] ??= []).push(10_000 / ((nowMs() - start) / 1000));
      cpuMs[name] = (cpuMs[name] ?? 0) + processCpuMs(pid) - cpu;
      rows[name] = (rows[name] ?? 0) + 10_000;
    }
  }
  report('bulk INSERT, 10k rows per statement (server CPU: the writing backend)', rates, cpuMs, rows);
}

if (wanted('update')) {
  // UPDATE of one column on 100k rows: pgtide's generated statement on other log formats.
  await client.query(`CREATE SCHEMA vu; ${logSql('vu.log_jsonb1', 'jsonb', 'one')} ${logSql('vu.log_json1', 'json', 'one')}`);
  await client.query(createTableSql('vu.probe'));
  await tide.watch('vu.probe');
  const generated = (await client.query<{ update_sql: string }>(`SELECT update_sql FROM pgtide.watched WHERE relid = 'vu.probe'::regclass`)).rows[0]!.update_sql;
  const oldMinus = /WHEN o\.(\S+) IS NOT NULL THEN to_jsonb\(o(?:\.\*)?\) - array_remove\(ARRAY\[[^\n]*\]::text\[\], NULL\) END/;
  const newImage = /THEN to_jsonb\(n(?:\.\*)?\) END/;
  const oldImage = /THEN to_jsonb\(o(?:\.\*)?\)\n/;
  if (!oldMinus.test(generated) || !newImage.test(generated) || !oldImage.test(generated)) {
    throw new Error('pgtide.update_capture_sql changed; update this experiment');
  }
  const onLog = (log: string, sql: string) => sql.replace(/INSERT INTO \S+\.log /, `INSERT INTO ${log} `);
  const asJson = (sql: string, old: 'full' | 'none') =>
    sql
      .replace(newImage, 'THEN row_to_json(n) END')
      .replace(oldImage, 'THEN row_to_json(o)\n')
      .replace(oldMinus, old === 'full' ? 'WHEN o.$1 IS NOT NULL THEN row_to_json(o) END' : 'END');
  const body = (sql: string) => `EXECUTE $q$${sql}$q$ USING position, xid, written`;
  const fns: Record<string, string> = {
    'jsonb, 1 index': onLog('vu.log_jsonb1', generated),
    'json, full old row, 1 index': asJson(onLog('vu.log_json1', generated), 'full'),
    'json, no old, 1 index': asJson(onLog('vu.log_json1', generated), 'none'),
  };
  const variants = ['unwatched', 'pgtide', 'bare trigger+log', ...Object.keys(fns)];
  const tables = new Map<string, string>();
  for (const [index, name] of variants.entries()) {
    const table = `vu.t${index}`;
    tables.set(name, table);
    await client.query(createTableSql(table));
    await client.query(insertRangeSql(table), [1, 100_000]);
    if (name === 'pgtide') await tide.watch(table);
    else if (name === 'bare trigger+log') await client.query(bareCaptureSql(table, `vu_t${index}`));
    else if (fns[name]) {
      await client.query(positioned(`vu.cap${index}`, body(fns[name])));
      await client.query(`CREATE TRIGGER cap AFTER UPDATE ON ${table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION vu.cap${index}()`);
    }
  }
  const rates: Record<string, number[]> = {};
  const cpuMs: Record<string, number> = {};
  const rows: Record<string, number> = {};
  for (let round = 0; round < 5; round += 1) {
    for (const name of variants.map((_, k) => variants[(k + round) % variants.length]!)) {
      const table = tables.get(name)!;
      await client.query(`VACUUM ANALYZE ${table}`);
      await client.query('TRUNCATE pgtide.log, bare_log, vu.log_jsonb1, vu.log_json1');
      await client.query('CHECKPOINT');
      const cpu = processCpuMs(pid);
      const start = nowMs();
      await client.query(`UPDATE ${table} SET quota = quota + 1`);
      (rates[name] ??= []).push(100_000 / ((nowMs() - start) / 1000));
      cpuMs[name] = (cpuMs[name] ?? 0) + processCpuMs(pid) - cpu;
      rows[name] = (rows[name] ?? 0) + 100_000;
    }
  }
  report('UPDATE of one column on 100k rows (server CPU: the writing backend)', rates, cpuMs, rows);
}

if (wanted('single')) {
  // Single-row autocommit INSERTs: what each per-statement part of capture() costs.
  await client.query(`CREATE SCHEMA vs; CREATE SEQUENCE vs.ids;
    ${logSql('vs.log_jsonb2', 'jsonb', 'two')} ${logSql('vs.log_jsonb1', 'jsonb', 'one')}
    ${positioned('vs.cap_min1', `INSERT INTO vs.log_jsonb1 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', to_jsonb(n), written FROM new_rows n`)};
    ${positioned('vs.cap_min2', `INSERT INTO vs.log_jsonb2 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', to_jsonb(n), written FROM new_rows n`)};`);
  await client.query(
    positioned('vs.cap_min2_definer', `INSERT INTO vs.log_jsonb2 (pos, txid, relid, op, new, written_at) SELECT position, xid, TG_RELID, 'i', to_jsonb(n), written FROM new_rows n`)
      .replace('LANGUAGE plpgsql', 'LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp'),
  );
  // pgtide's own capture() without its NOTIFY block.
  const definition = (await client.query<{ def: string }>(`SELECT pg_get_functiondef('pgtide.capture'::regproc) AS def`)).rows[0]!.def;
  const withoutNotify = definition.replace('FUNCTION pgtide.capture()', 'FUNCTION pgtide.capture_without_notify()').replace(/IF captured > 0 AND pg_try_advisory_xact_lock[\s\S]*?END IF;/, '');
  if (withoutNotify.includes('pg_notify')) throw new Error('pgtide.capture() changed; update this experiment');
  await client.query(withoutNotify);
  const variants: Record<string, string | null> = {
    unwatched: null,
    'bare trigger+log': 'bare',
    'positions, 1 index': 'vs.cap_min1',
    'positions, 2 indexes': 'vs.cap_min2',
    '+ SECURITY DEFINER, SET': 'vs.cap_min2_definer',
    'pgtide capture, no NOTIFY': 'pgtide.capture_without_notify',
    pgtide: 'pgtide',
  };
  const tables = new Map<string, string>();
  let index = 0;
  for (const [name, capture] of Object.entries(variants)) {
    const table = `vs.t${index}`;
    tables.set(name, table);
    await client.query(createTableSql(table));
    if (capture === 'pgtide') await tide.watch(table);
    else if (capture === 'bare') await client.query(bareCaptureSql(table, `vs_t${index}`));
    else if (capture) await client.query(`CREATE TRIGGER cap AFTER INSERT ON ${table} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ${capture}()`);
    index += 1;
  }
  // pgtide's LISTEN connection is open (the Tide), as in an application.
  for (const clients of [1, 4]) {
    const writers = await Promise.all(
      Array.from({ length: clients }, async () => {
        const writer = new pg.Client({ connectionString: server.connectionString });
        await writer.connect();
        return writer;
      }),
    );
    const rates: Record<string, number[]> = {};
    const cpuMs: Record<string, number> = {};
    const rows: Record<string, number> = {};
    const names = Object.keys(variants);
    for (let round = 0; round < 16; round += 1) {
      for (const name of names.map((_, k) => names[(k + round) % names.length]!)) {
        const table = tables.get(name)!;
        const text = `INSERT INTO ${table} (${tableColumns.join(', ')}) VALUES (nextval('vs.ids'), 'user', 'user@example.com', 1000, true, now(), repeat('x', 40))`;
        const cpu = serverCpu(postmaster);
        const start = nowMs();
        const deadline = start + 250;
        const counts = await Promise.all(
          writers.map(async (writer) => {
            let count = 0;
            for (; nowMs() < deadline; count += 1) await writer.query({ name: `single_${table}`, text });
            return count;
          }),
        );
        const count = counts.reduce((a, b) => a + b, 0);
        (rates[name] ??= []).push(count / ((nowMs() - start) / 1000));
        cpuMs[name] = (cpuMs[name] ?? 0) + cpuSince(cpu, serverCpu(postmaster));
        rows[name] = (rows[name] ?? 0) + count;
      }
    }
    report(`single-row INSERT, ${clients} client(s) (server CPU: every server process, incl. the LISTEN backend)`, rates, cpuMs, rows);
    await Promise.all(writers.map((writer) => writer.end()));
  }
}

if (wanted('read')) {
  // Reading the log: what parsing written_at costs, and jsonb vs json columns.
  await client.query(createTableSql('read_rows'));
  await tide.watch('read_rows');
  for (let from = 1; from <= 200_000; from += 100_000) await client.query(insertRangeSql('read_rows'), [from, from + 99_999]);
  await client.query(`CREATE TABLE log_as_json AS SELECT id, pos, txid, relid, op, changed, new::json AS new, old::json AS old, written_at FROM pgtide.log`);
  await client.query('CREATE INDEX ON log_as_json (relid, pos, id)');
  await client.query('VACUUM ANALYZE pgtide.log');
  await client.query('VACUUM ANALYZE log_as_json');
  const all = 'l.id, l.pos, l.txid, l.op, l.changed, l.new, l.old, l.written_at';
  const epoch = 'l.id, l.pos, l.txid, l.op, l.changed, l.new, l.old, (extract(epoch FROM l.written_at) * 1000)::float8 AS written_ms';
  const variants: Record<string, [string, string]> = {
    'jsonb log, written_at as timestamptz (=pgtide)': ['pgtide.log', all],
    'jsonb log, written_at as epoch ms': ['pgtide.log', epoch],
    'json log, written_at as timestamptz': ['log_as_json', all],
    'json log, written_at as epoch ms': ['log_as_json', epoch],
  };
  const rates: Record<string, number[]> = {};
  for (let round = 0; round < 5; round += 1) {
    for (const [name, [table, columns]] of Object.entries(variants)) {
      const start = nowMs();
      const cursor = client.query(new Cursor(`SELECT ${columns} FROM ${table} l WHERE l.relid = 'read_rows'::regclass ORDER BY l.pos, l.id`));
      let rows = 0;
      for (let batch = await cursor.read(1000); batch.length > 0; batch = await cursor.read(1000)) rows += batch.length;
      await cursor.close();
      (rates[name] ??= []).push(rows / ((nowMs() - start) / 1000));
    }
  }
  console.log('\nreading 200k log rows with pg-cursor, 1000 per read (rows/s, median of 5)');
  const base = rates['jsonb log, written_at as timestamptz (=pgtide)']!;
  for (const [name, values] of Object.entries(rates)) {
    console.log(name.padEnd(48), String(Math.round(median(values))).padStart(8), median(values.map((value, k) => value / base[k]!)).toFixed(2).padStart(6));
  }
}

await tide.close();
await client.end();
await server.destroy();
