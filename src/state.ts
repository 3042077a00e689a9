import type { Pool } from 'pg';
import { rowKeyString } from './change.js';
import type { TableInfo } from './catalog.js';
import type { ResumePoint } from './changes.js';
import { atHorizon } from './log.js';
import { inTransaction } from './sql.js';
import type { Change, RowData } from './types.js';

/** A table's rows and the log position they correspond to. */
export interface Snapshot {
  readonly rows: Map<string, RowData>;
  readonly resume: ResumePoint;
}

/**
 * Reads the rows (all, or the one named by `rowKey`) and the snapshot they were read
 * in, in one REPEATABLE READ transaction. Every change at or below the snapshot's xmin
 * is in the rows; a change above it is in them exactly when its transaction is visible
 * to the snapshot. So the stream resuming after xmin skips precisely the changes the
 * rows already reflect, however long the log keeps them.
 */
export async function readSnapshot(
  pool: Pool,
  table: TableInfo,
  rowKeyValues: Record<string, unknown> | undefined,
): Promise<Snapshot> {
  return inTransaction(pool, async (client) => {
    await client.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
    const { rows: snapshotRows } = await client.query<{ snapshot: string; filter: string | null }>(
      `SELECT pg_current_snapshot()::text AS snapshot,
              (SELECT string_agg(format('t.%I = $' || k.ord, k.name), ' AND ')
                 FROM unnest($1::text[]) WITH ORDINALITY AS k(name, ord)) AS filter`,
      [rowKeyValues ? table.keyColumns : []],
    );
    const { snapshot, filter } = snapshotRows[0]!;
    const values = rowKeyValues ? table.keyColumns.map((column) => rowKeyValues[column]) : [];
    const { rows } = await client.query<{ row: RowData }>(
      `SELECT row_to_json(t.*) AS row FROM ${table.qualified} t${filter ? ` WHERE ${filter}` : ''}`,
      values,
    );
    const state = new Map<string, RowData>();
    for (const { row } of rows) state.set(rowKeyString(table.keyColumns, row), row);
    const visible = visibleIn(snapshot);
    return {
      rows: state,
      resume: { after: atHorizon(visible.xmin), alreadySeen: (change: Change) => visible.includes(BigInt(change.txid)) },
    };
  });
}

/** Parses a `pg_snapshot` (`xmin:xmax:xip,...`) into a visibility test for transaction ids. */
export function visibleIn(snapshot: string): { readonly xmin: bigint; includes(txid: bigint): boolean } {
  const [xmin, xmax, inProgress] = snapshot.split(':');
  const low = BigInt(xmin!);
  const high = BigInt(xmax!);
  const running = new Set((inProgress ?? '').split(',').filter(Boolean).map(BigInt));
  return {
    xmin: low,
    includes: (txid) => txid < low || (txid < high && !running.has(txid)),
  };
}
