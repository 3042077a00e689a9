import type { Pool } from 'pg';
import { rowKeyString } from './change.js';
import type { TableInfo } from './catalog.js';
import type { ResumePoint } from './changes.js';
import { parseSnapshot } from './log.js';
import { inTransaction, type SchemaNames } from './sql.js';
import type { RowData } from './types.js';

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
    const { rows } = await client.query<{ row: RowData }>(
      `SELECT row_to_json(t.*) AS row FROM ${table.qualified} t${filter ? ` WHERE ${filter}` : ''}`,
      values,
    );
    const state = new Map<string, RowData>();
    for (const { row } of rows) state.set(rowKeyString(table.keyColumns, row), row);
    // The rows hold exactly the changes of the transactions visible in this snapshot: the
    // stream goes on from there.
    return { rows: state, resume: { after: { era, base: parseSnapshot(snapshot) } } };
  });
}
