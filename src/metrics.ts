import { Counter, Gauge, type Registry } from 'prom-client';
import type { Tide } from './connect.js';
import type { ConsumerInfo } from './consumers.js';
import type { Blocker } from './types.js';

/** Options of {@link registerMetrics}. */
export interface MetricsOptions {
  /** The registry to register on (`prom-client`'s `register`, or your own `new Registry()`). */
  readonly registry: Registry;
  /** Prefix of every metric name. Default `pgtide_`. */
  readonly prefix?: string;
  /**
   * Milliseconds a scrape may reuse what the previous one read from the database (lag,
   * dead letters, open transactions). Default 1000.
   */
  readonly cacheFor?: number;
}

/** What {@link registerMetrics} registered. */
export interface TideMetrics {
  /** Removes pgtide's metrics from the registry and stops counting warnings. */
  unregister(): void;
}

interface DatabaseFacts {
  readonly consumers: readonly ConsumerInfo[];
  readonly deadLetters: ReadonlyMap<string, number>;
  readonly blockers: readonly Blocker[];
}

/**
 * Registers pgtide's collectors on a `prom-client` registry (an optional peer
 * dependency): changes read and delivered per table, log queries, NOTIFY wake-ups,
 * LISTEN reconnects and state, per consumer its lag in changes and seconds and its
 * in-flight count, stalls and expiries, dead letters, and open transactions that hold
 * back pruning (count, and age per pid). The database figures are read when scraped
 * (one `consumers()`, one dead-letter count, one `blockers()` per `cacheFor`).
 *
 * @example
 * ```ts
 * import { Registry } from 'prom-client';
 * import { registerMetrics } from 'pgtide/metrics';
 *
 * const registry = new Registry();
 * registerMetrics(tide, { registry });
 * app.get('/metrics', async (_req, res) => res.type(registry.contentType).send(await registry.metrics()));
 * ```
 */
export function registerMetrics(tide: Tide, options: MetricsOptions): TideMetrics {
  const prefix = options.prefix ?? 'pgtide_';
  const registers = [options.registry];
  const cacheFor = options.cacheFor ?? 1000;
  const { counters } = tide;
  let facts: { readonly at: number; readonly read: Promise<DatabaseFacts> } | undefined;
  const databaseFacts = (): Promise<DatabaseFacts> => {
    if (!facts || Date.now() - facts.at > cacheFor) facts = { at: Date.now(), read: readFacts(tide) };
    return facts.read;
  };

  const stalls = new Map<string, number>();
  const expiries = new Map<string, number>();
  const warnings = tide.warnings$.subscribe((warning) => {
    const counted = warning.kind === 'consumer-stalled' ? stalls : expiries;
    counted.set(warning.consumer, (counted.get(warning.consumer) ?? 0) + 1);
  });

  /** A counter whose value is pgtide's own count (set on collect). */
  type Counted = Iterable<[Record<string, string>, number]>;
  const counted = (name: string, help: string, labelNames: readonly string[], values: () => Counted | Promise<Counted>) =>
    new Counter({
      name: prefix + name,
      help,
      labelNames,
      registers,
      async collect() {
        const current = await values();
        this.reset();
        for (const [labels, value] of current) if (value > 0) this.inc(labels, value);
      },
    });
  /** A per-consumer gauge of what `tide.consumers()` says (read when scraped). */
  const lagGauge = (name: string, help: string, value: (info: ConsumerInfo) => number) =>
    new Gauge({
      name: prefix + name,
      help,
      labelNames: ['consumer', 'table'],
      registers,
      async collect() {
        const { consumers } = await databaseFacts();
        this.reset();
        for (const info of consumers) this.set({ consumer: info.name, table: info.table ?? '' }, value(info));
      },
    });
  const tableNames = new Map<number, string>();
  const namesOf = async (relids: readonly number[]): Promise<ReadonlyMap<number, string>> => {
    const unknown = relids.filter((relid) => !tableNames.has(relid));
    if (unknown.length > 0) {
      const { rows } = await tide.pool.query<{ relid: number; name: string }>(
        `SELECT c.oid::int8::float8 AS relid, format('%I.%I', n.nspname, c.relname) AS name
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY ($1::oid[])`,
        [unknown],
      );
      for (const row of rows) tableNames.set(row.relid, row.name);
    }
    return tableNames;
  };
  const metrics = [
    counted('changes_read_total', 'Log rows read, per table (replay and live).', ['table'], async () => {
      const names = await namesOf([...counters.rowsRead.keys()]);
      return [...counters.rowsRead].map(([relid, rows]): [Record<string, string>, number] => [{ table: names.get(relid) ?? String(relid) }, rows]);
    }),
    counted('changes_delivered_total', 'Changes emitted to subscribers, per table.', ['table'], () =>
      [...counters.delivered].map(([table, count]): [Record<string, string>, number] => [{ table }, count]),
    ),
    counted('log_queries_total', 'Queries on the change log (pages and the idle poll).', [], () => [[{}, counters.logQueries]]),
    counted('wakeups_total', 'NOTIFY wake-ups heard on the LISTEN connection.', [], () => [[{}, counters.wakeUps]]),
    counted('listen_reconnects_total', 'Times the LISTEN connection came back after it was lost.', [], () => [[{}, counters.listenReconnects]]),
    counted('consumer_stalls_total', 'Stall warnings (a change delivered and not acknowledged for stallTimeout), per consumer.', ['consumer'], () =>
      [...stalls].map(([consumer, count]) => [{ consumer }, count]),
    ),
    counted('consumer_expiries_total', 'Consumers expired for lagging more than maxLag changes.', ['consumer'], () =>
      [...expiries].map(([consumer, count]) => [{ consumer }, count]),
    ),
    new Gauge({
      name: `${prefix}listen_up`,
      help: 'Whether the LISTEN connection is up (1) or not (0).',
      registers,
      collect() {
        this.set(counters.listening ? 1 : 0);
      },
    }),
    new Gauge({
      name: `${prefix}consumer_in_flight`,
      help: "Changes a durable consumer's streams in this process delivered and not yet processed.",
      labelNames: ['consumer'],
      registers,
      collect() {
        this.reset();
        const byConsumer = new Map<string, number>();
        for (const { consumer, inFlight } of tide.inFlight()) byConsumer.set(consumer, (byConsumer.get(consumer) ?? 0) + inFlight);
        for (const [consumer, inFlight] of byConsumer) this.set({ consumer }, inFlight);
      },
    }),
    lagGauge('consumer_lag_changes', 'Changes of its table a durable consumer has not acknowledged.', (info) => info.lagChanges),
    lagGauge('consumer_lag_seconds', 'Age of the oldest change a durable consumer has not acknowledged, in seconds.', (info) => info.lagSeconds),
    new Gauge({
      name: `${prefix}dead_letters`,
      help: 'Dead letters kept, per consumer (or consumer group).',
      labelNames: ['consumer'],
      registers,
      async collect() {
        this.reset();
        for (const [consumer, count] of (await databaseFacts()).deadLetters) this.set({ consumer }, count);
      },
    }),
    new Gauge({
      name: `${prefix}blocking_transactions`,
      help: 'Open writing and prepared transactions (any database of the server): they hold back their own changes and pruning.',
      registers,
      async collect() {
        this.set((await databaseFacts()).blockers.length);
      },
    }),
    new Gauge({
      name: `${prefix}blocking_transaction_age_seconds`,
      help: 'Age of each open writing or prepared transaction, by pid (prepared: by gid).',
      labelNames: ['pid', 'kind', 'database'],
      registers,
      async collect() {
        this.reset();
        for (const blocker of (await databaseFacts()).blockers) {
          this.set({ pid: String(blocker.pid ?? blocker.gid ?? ''), kind: blocker.kind, database: blocker.database ?? '' }, blocker.ageSeconds);
        }
      },
    }),
  ];
  const ownNames = options.registry
    .getMetricsAsArray()
    .map((metric) => (metric as unknown as { name: string }).name)
    .filter((name) => metrics.some((metric) => metric === options.registry.getSingleMetric(name)));
  return {
    unregister() {
      warnings.unsubscribe();
      for (const name of ownNames) options.registry.removeSingleMetric(name);
    },
  };
}

async function readFacts(tide: Tide): Promise<DatabaseFacts> {
  const [consumers, deadLetters, blockers] = await Promise.all([
    tide.consumers(),
    tide.pool
      .query<{ consumer: string; count: number }>(
        `SELECT consumer, count(*)::int AS count FROM ${tide.schemaIdent}.dead_letters GROUP BY consumer`,
      )
      .then(({ rows }) => new Map(rows.map((row) => [row.consumer, row.count]))),
    tide.blockers(),
  ]);
  return { consumers, deadLetters, blockers };
}
