import type { Pool } from 'pg';
import { connect, defer, filter, first, map, startWith, switchMap, type Observable } from 'rxjs';
import { stateKey, toState } from '../operators/toState.js';
import { projectRow, rowKeyString } from './change.js';
import type { TableInfo } from './catalog.js';
import { changeEvents, rowIdValues, type ResumePoint, type StreamContext } from './changes.js';
import { PgTideError } from './errors.js';
import { parseSnapshot } from './log.js';
import { classifyDatabaseError, inTransaction, type SchemaNames } from './sql.js';
import type { Change, LiveEvent, RowData, StateOptions, StreamEvent } from './types.js';

/**
 * The stream behind `live$`: the rows read at one snapshot (keyed by `stateKey`), then
 * each change that snapshot does not hold.
 */
export function liveRows<Row>(
  context: StreamContext,
  pool: Pool,
  schema: SchemaNames,
  table: string,
  options: StateOptions<Row>,
): Observable<LiveEvent<Row>> {
  return defer(async () => {
    let keyValues: Record<string, unknown> | undefined;
    const info = await context.prepare(table, options.columns, (described) => {
      if (options.rowId !== undefined) keyValues = rowIdValues(described, options.rowId);
    });
    const snapshot = await readSnapshot(pool, schema, info, keyValues).catch((error: unknown) => {
      throw classifyDatabaseError(error, `state$('${table}')`) ?? error;
    });
    const keep = options.columns ? new Set([...info.keyColumns, ...options.columns]) : undefined;
    const rows = new Map<string, Row>();
    for (const [key, row] of snapshot.rows) {
      const projected = keep ? projectRow(row, keep)! : row;
      rows.set(key, options.schema ? parseSnapshotRow(options.schema, projected, info.qualified, key) : (projected as Row));
    }
    return { rows, resume: snapshot.resume };
  }).pipe(
    switchMap(({ rows, resume }) =>
      changeEvents<Row>(context, table, options, resume).pipe(
        filter((event): event is Extract<StreamEvent<Row>, { kind: 'change' }> => event.kind === 'change'),
        startWith<LiveEvent<Row>>({ kind: 'snapshot', rows }),
      ),
    ),
  );
}

/** The stream behind `state$`: `live$`'s snapshot, then a new map after each change. */
export function liveState<Row>(
  context: StreamContext,
  pool: Pool,
  schema: SchemaNames,
  table: string,
  options: StateOptions<Row>,
): Observable<ReadonlyMap<string, Row>> {
  return liveRows(context, pool, schema, table, options).pipe(
    connect((events) =>
      events.pipe(
        first(),
        switchMap((snapshot) => {
          const initial = (snapshot as Extract<LiveEvent<Row>, { kind: 'snapshot' }>).rows;
          return events.pipe(
            filter((event): event is Extract<LiveEvent<Row>, { kind: 'change' }> => event.kind === 'change'),
            map((event): Change<Row> => event.change),
            toState<Row>(stateKey, initial),
            startWith(initial as ReadonlyMap<string, Row>),
          );
        }),
      ),
    ),
  );
}

/** A table's rows and the log position they correspond to. */
export interface Snapshot {
  readonly rows: Map<string, RowData>;
  readonly resume: ResumePoint;
}

/**
 * Reads the rows (all, or the one named by `rowKey`) and the snapshot they were read
 * in, in one REPEATABLE READ transaction. The rows reflect exactly the transactions
 * visible in that snapshot, which is a position: the stream resuming there skips
 * precisely the changes the rows already hold, however long the log keeps them.
 */
export async function readSnapshot(
  pool: Pool,
  schema: SchemaNames,
  table: TableInfo,
  rowKeyValues: Record<string, unknown> | undefined,
): Promise<Snapshot> {
  return inTransaction(pool, async (client) => {
    await client.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
    const { rows: snapshotRows } = await client.query<{ snapshot: string; era: number; filter: string | null }>(
      `SELECT pg_current_snapshot()::text AS snapshot, (SELECT max(era) FROM ${schema.ident}.eras) AS era,
              (SELECT string_agg(format('t.%I = $' || k.ord, k.name), ' AND ')
                 FROM unnest($1::text[]) WITH ORDINALITY AS k(name, ord)) AS filter`,
      [rowKeyValues ? table.keyColumns : []],
    );
    const { snapshot, era, filter } = snapshotRows[0]!;
    const values = rowKeyValues ? table.keyColumns.map((column) => rowKeyValues[column]) : [];
    // SELECT *, so the rows carry the values the pool's own queries return, as changes do.
    const { rows } = await client.query<RowData>(`SELECT * FROM ${table.qualified} t${filter ? ` WHERE ${filter}` : ''}`, values);
    const state = new Map<string, RowData>();
    for (const row of rows) state.set(rowKeyString(table.keyColumns, row), row);
    // The rows hold exactly the changes of the transactions visible in this snapshot: the
    // stream goes on from there.
    return { rows: state, resume: { after: { era, base: parseSnapshot(snapshot) } } };
  });
}

function parseSnapshotRow<Row>(schema: NonNullable<StateOptions<Row>['schema']>, row: RowData, table: string, key: string): Row {
  try {
    return schema.parse(row);
  } catch (error) {
    throw new PgTideError('INVALID_ROW', `row ${JSON.stringify(key)} of ${table} does not match the schema`, { table, key }, { cause: error });
  }
}
