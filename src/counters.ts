/**
 * What a Tide counts as it works, for `pgtide/metrics`: plain numbers, increased where
 * the work happens, read when metrics are scraped.
 */
export class Counters {
  /** Page and poll queries on the log. */
  logQueries = 0;
  /** Log rows read, by table oid. */
  readonly rowsRead = new Map<number, number>();
  /** Changes emitted to subscribers, by table (`schema.name`). */
  readonly delivered = new Map<string, number>();
  /** NOTIFY wake-ups heard by the LISTEN connection. */
  wakeUps = 0;
  /** Times the LISTEN connection came back after it was lost. */
  listenReconnects = 0;
  /** Whether the LISTEN connection is up now. */
  listening = false;

  read(relid: number, rows: number): void {
    this.logQueries += 1;
    if (rows > 0) this.rowsRead.set(relid, (this.rowsRead.get(relid) ?? 0) + rows);
  }

  deliver(table: string): void {
    this.delivered.set(table, (this.delivered.get(table) ?? 0) + 1);
  }

  listen(up: boolean, everUp: boolean): void {
    if (up && !this.listening && everUp) this.listenReconnects += 1;
    this.listening = up;
  }
}
