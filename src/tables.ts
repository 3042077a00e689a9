import type { Pool } from 'pg';
import { watchTable } from './capture.js';
import { assertColumns, describeTable, type TableInfo } from './catalog.js';
import { PgTideError } from './errors.js';
import type { SchemaNames } from './sql.js';

/** How long (ms) a table's readability and capture check serves new subscriptions. */
const readyFor = 1000;

/**
 * What a Tide knows about tables: their catalog description, and whether this role may
 * read them and they capture what a stream needs. Shared by a burst of subscriptions.
 */
export class Tables {
  private readonly prepared = new Map<string, Promise<TableInfo>>();
  /** Readability checked and capture installed, per table and columns. */
  private readonly ready = new Map<string, { readonly at: number; readonly done: Promise<void> }>();

  constructor(
    private readonly pool: Pool,
    private readonly names: SchemaNames,
  ) {}

  /**
   * Describes the table, runs `check` on it (so bad options install nothing), checks
   * that this role may read it, then watches it if it does not capture `columns` yet.
   */
  async prepare(
    table: string,
    columns: readonly string[] | undefined,
    check: (info: TableInfo) => void,
  ): Promise<TableInfo> {
    const cacheKey = JSON.stringify([table, columns ?? null]);
    let prepared = this.prepared.get(cacheKey);
    if (!prepared) {
      prepared = describeTable(this.pool, table);
      this.prepared.set(cacheKey, prepared);
    }
    try {
      const info = await prepared;
      // Per subscription, and before anything is installed: its own options.
      check(info);
      if (columns) assertColumns(info, columns, 'columns');
      // Per table and columns, shared by a burst of subscriptions (10k rowId streams need
      // not ask 10k times), and asked again after a second: another process may unwatch.
      let ready = this.ready.get(cacheKey);
      if (!ready || Date.now() - ready.at > readyFor) {
        ready = { at: Date.now(), done: this.assertReadable(info).then(() => this.ensureWatched(info, columns)) };
        this.ready.set(cacheKey, ready);
      }
      await ready.done;
      return info;
    } catch (error) {
      this.prepared.delete(cacheKey);
      this.ready.delete(cacheKey);
      throw error;
    }
  }

  /**
   * A role sees the changes of the tables it may read and no others (row-level security
   * on the log): say so at once rather than stream nothing.
   */
  private async assertReadable(info: TableInfo): Promise<void> {
    const { rows } = await this.pool.query<{ readable: boolean }>(
      `SELECT has_table_privilege($1::oid, 'SELECT') AS readable`,
      [info.relid],
    );
    if (!rows[0]?.readable) {
      throw new PgTideError(
        'PERMISSION_DENIED',
        `permission denied: this role may not SELECT from ${info.qualified}, so it may not read its changes`,
        { table: info.qualified },
      );
    }
  }

  /** Watches the table unless it already captures what these columns need. */
  private async ensureWatched(info: TableInfo, columns: readonly string[] | undefined): Promise<void> {
    const { rows } = await this.pool.query<{ columns: string[] | null }>(
      `SELECT columns FROM ${this.names.ident}.watched WHERE relid = $1`,
      [info.relid],
    );
    const current = rows[0];
    const covered =
      current !== undefined &&
      (current.columns === null || (columns !== undefined && columns.every((column) => current.columns!.includes(column))));
    if (!covered) await watchTable(this.pool, this.names, info.qualified, columns);
  }

  /** Forgets what is known: capture was changed through this Tide. */
  forget(): void {
    this.prepared.clear();
    this.ready.clear();
  }
}
