// Commit -> emission latency at a steady rate of single-row autocommit writes, measured
// from the moment each statement is sent, in one process (one clock):
//  - notify: SELECT pg_notify(...) -> pg-listen callback (the floor of any NOTIFY design)
//  - bare:   row trigger writing a log row + NOTIFY per commit -> pg-listen -> one SELECT of new log rows
//  - pgtide: INSERT into a watched table -> tide.changes$ emission
import type { Channel } from '../worker.js';
import { connectTide, connectedClient, createTableSql, insertOneSql, insertRangeSql } from '../lib/db.js';
import { createSubscriber } from '../lib/listen.js';
import { paced } from '../lib/pacer.js';
import { nowMs, quantile, sleep } from '../lib/stats.js';

export interface LatencyArgs {
  readonly url: string;
  readonly rate: number;
  readonly durationMs: number;
  readonly warmupMs: number;
  readonly runs: number;
}

export type Mode = 'notify' | 'bare' | 'pgtide';

export interface LatencyRun {
  readonly mode: Mode;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly sent: number;
  readonly received: number;
  readonly rate: number;
}

export default async function latency(args: LatencyArgs, _channel: Channel): Promise<LatencyRun[]> {
  const writer = await connectedClient(args.url);
  const reader = await connectedClient(args.url);
  await writer.query(`${createTableSql('lat_pgtide')}; ${createTableSql('lat_bare')};
    CREATE TABLE bare_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, new jsonb NOT NULL);
    CREATE FUNCTION bare_capture() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO bare_log (new) VALUES (to_jsonb(NEW));
      PERFORM pg_notify('bench_bare', '');
      RETURN NULL;
    END $$;
    CREATE TRIGGER bare_capture AFTER INSERT ON lat_bare FOR EACH ROW EXECUTE FUNCTION bare_capture();`);
  const tide = await connectTide(args.url);
  await tide.watch('lat_pgtide');
  // A production log is not empty: it holds what consumers have not acknowledged and other
  // tables' changes. 100k older changes of another table (in the bare pipeline's log
  // too), so the logs' indexes and statistics are those of logs in use.
  await writer.query(createTableSql('lat_history'));
  await tide.watch('lat_history');
  await writer.query(insertRangeSql('lat_history'), [1, 100_000]);
  await writer.query('INSERT INTO bare_log (new) SELECT to_jsonb(h) FROM lat_history h');

  // Send times by row id (ids are never reused).
  const maxRows = Math.ceil(((args.durationMs + args.warmupMs) / 1000) * args.rate * (args.runs + 1) * 3) + 10_000;
  const sentAt = new Float64Array(maxRows);
  let nextId = 1;
  let recording: Float64Array | undefined;
  let recorded = 0;
  let received = 0;
  const arrive = (id: number) => {
    const latency = nowMs() - sentAt[id]!;
    received += 1;
    if (recording && recorded < recording.length) recording[recorded++] = latency;
  };

  const listener = createSubscriber({ connectionString: args.url }, { parse: (payload: string) => payload });
  await listener.connect();
  await listener.listenTo('bench_lat');
  await listener.listenTo('bench_bare');
  listener.notifications.on('bench_lat', (payload: string) => arrive(Number(payload)));
  let bareCursor = '0';
  let bareReading = false;
  let bareAgain = false;
  const readBare = async (): Promise<void> => {
    if (bareReading) {
      bareAgain = true;
      return;
    }
    bareReading = true;
    try {
      do {
        bareAgain = false;
        const { rows } = await reader.query<{ id: string; new: { id: number } }>({
          name: 'bare_read',
          text: 'SELECT id, new FROM bare_log WHERE id > $1 ORDER BY id',
          values: [bareCursor],
        });
        for (const row of rows) arrive(Number(row.new.id));
        if (rows.length > 0) bareCursor = rows[rows.length - 1]!.id;
      } while (bareAgain);
    } finally {
      bareReading = false;
    }
  };
  listener.notifications.on('bench_bare', () => void readBare());

  const notifySql = { name: 'notify', text: 'SELECT pg_notify($1, $2)' };
  const bareSql = { name: 'ins_bare', text: insertOneSql('lat_bare') };
  const tideSql = { name: 'ins_tide', text: insertOneSql('lat_pgtide') };

  const measure = async (mode: Mode, durationMs: number, record: boolean): Promise<LatencyRun> => {
    const count = Math.round((durationMs / 1000) * args.rate);
    let subscription: { unsubscribe(): void } | undefined;
    if (mode === 'pgtide') {
      // One subscription both counts and reports caught-up (a second one would be a second stream).
      let markCaughtUp!: () => void;
      const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
      subscription = tide.events$<{ id: number }>('lat_pgtide').subscribe((event) => {
        if (event.kind === 'change') arrive(Number(event.change.key.id));
        else markCaughtUp();
      });
      await caughtUp;
    }
    recording = record ? new Float64Array(count) : undefined;
    recorded = 0;
    received = 0;
    const first = nextId;
    const rate = await paced(count, args.rate, async () => {
      const id = nextId++;
      const query = mode === 'notify' ? notifySql : mode === 'bare' ? bareSql : tideSql;
      const values: unknown[] = mode === 'notify' ? ['bench_lat', String(id)] : [id];
      sentAt[id] = nowMs();
      await writer.query({ ...query, values });
    });
    const sent = nextId - first;
    const deadline = nowMs() + 5000;
    while (received < sent && nowMs() < deadline) await sleep(5);
    subscription?.unsubscribe();
    const samples = recording ? recording.subarray(0, recorded) : new Float64Array(0);
    return { mode, p50: quantile(samples, 0.5), p99: quantile(samples, 0.99), max: quantile(samples, 1), sent, received, rate };
  };

  const modes: Mode[] = ['notify', 'bare', 'pgtide'];
  for (const mode of modes) await measure(mode, args.warmupMs, false);
  // A production log has statistics (autoanalyze runs within a minute of writes), and
  // with them the planner's choices differ from a never-analyzed table's.
  await writer.query('ANALYZE pgtide.log, bare_log');
  const results: LatencyRun[] = [];
  for (let run = 0; run < args.runs; run += 1) {
    // Rotate the order so that drift over the run hits every mode alike.
    for (let index = 0; index < modes.length; index += 1) {
      results.push(await measure(modes[(run + index) % modes.length]!, args.durationMs, true));
    }
  }
  await listener.close();
  await tide.close();
  await writer.end();
  await reader.end();
  return results;
}
