import type { Observable, Subscriber } from 'rxjs';
import { sleep } from './backoff.js';
import type { TableInfo } from './catalog.js';
import { toChange, withRowSchema } from './change.js';
import { StreamBase, trackedStream, type StreamContext } from './changes.js';
import { expiredError } from './consumers.js';
import { recordDelivery } from './delivery.js';
import { PgTideError, RowValidationError } from './errors.js';
import { PendingBackoff } from './hub.js';
import { NOTHING_VISIBLE, type Batch, type Position, type Queryable } from './log.js';
import { lostConnection } from './pages.js';
import { classifyDatabaseError } from './sql.js';
import type { Change, Transaction, TransactionsOptions } from './types.js';

/** What a transactions$ stream needs beyond a change stream's context. */
export interface TransactionsContext extends StreamContext {
  /** How long (ms) an idle stream waits before reading anyway. */
  readonly pollInterval: number;
}

/**
 * The stream behind `transactions$`: reads whole batches of several tables at one
 * snapshot and emits each transaction that wrote any of them, once, with its changes in
 * statement order. Its reader is its own (the shared feeds read per table), woken by the
 * same NOTIFYs.
 */
export function transactionEvents<Row>(
  context: TransactionsContext,
  tables: readonly string[],
  options: TransactionsOptions<Row>,
): Observable<Transaction<Row>> {
  return trackedStream(context, (subscriber) => new TransactionStream<Row>(context, tables, options, subscriber));
}

class TransactionStream<Row> extends StreamBase<Transaction<Row>> {
  private wake: (() => void) | undefined;
  private woken = false;
  private unlisten: (() => void) | undefined;

  constructor(
    private readonly context: TransactionsContext,
    private readonly tables: readonly string[],
    private readonly options: TransactionsOptions<Row>,
    subscriber: Subscriber<Transaction<Row>>,
  ) {
    super(subscriber, options.consumer);
    this.onPhase = () => context.phaseChanged();
  }

  get tableName(): string {
    return this.tables.join(', ');
  }

  async run(): Promise<void> {
    try {
      const infos: TableInfo[] = [];
      for (const table of this.tables) infos.push(await this.context.prepare(table, undefined, () => undefined));
      const relids = infos.map((info) => info.relid);
      this.unlisten = this.context.hub.onWake(relids, () => this.nudge());
      const consumer = this.options.consumer;
      let position: Position;
      if (consumer === undefined) {
        position = await this.startPosition(infos);
      } else {
        const opened = await this.openConsumer(this.context, consumer, infos, (db) => this.startPosition(infos, db));
        if (opened === undefined) return;
        const stored = opened.position;
        // A consumer is saved between batches only; a position mid-batch (never written
        // by this stream) restarts its batch.
        position = { era: stored.era, base: stored.base };
      }
      const backoff = new PendingBackoff(this.context.pollInterval);
      let failingSince: number | undefined;
      this.setPhase('replaying');
      while (!this.ended) {
        this.woken = false;
        let batch: Batch;
        try {
          batch = await this.context.reader.batch(relids, position, this.context.pageSize, true, consumer === undefined ? undefined : [consumer]);
          failingSince = undefined;
          if (this.phase === 'reconnecting') this.setPhase('replaying');
        } catch (error) {
          if (this.ended || this.context.closed()) return;
          failingSince ??= Date.now();
          const giveUp = lostConnection(error, failingSince, this.context.reconnectTimeout, this.tables.join(', '));
          if (giveUp) throw giveUp;
          this.setPhase('reconnecting');
          await sleep(100);
          continue;
        }
        if (this.ended) return;
        // Prune expired this consumer and may have deleted rows of this batch.
        if (batch.expired.length > 0) throw expiredError(consumer!, new Date());
        this.emitBatch(batch, infos, position);
        position = batch.next;
        if (batch.rows.length > 0) continue;
        this.setPhase('live');
        await this.idle(backoff.next(batch.pending) ?? this.context.pollInterval);
      }
    } catch (error) {
      if (this.ended) return;
      if (this.context.closed()) void this.complete(false);
      else this.fail(classifyDatabaseError(error, `transactions$(${JSON.stringify(this.tables)})`) ?? error);
    }
  }

  protected stopReading(): void {
    this.unlisten?.();
    this.wake?.();
  }

  private nudge(): void {
    this.woken = true;
    this.wake?.();
  }

  /** Waits for a wake-up, or `delay` ms. */
  private async idle(delay: number): Promise<void> {
    if (this.woken || this.ended) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, delay);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = undefined;
  }

  /** Where the stream starts without a saved position (a consumer's first run). */
  private async startPosition(infos: readonly TableInfo[], db?: Queryable): Promise<Position> {
    const from = this.options.from ?? 'now';
    if (from === 'beginning') return { era: 1, base: NOTHING_VISIBLE };
    if (from === 'now') return this.context.reader.now(db);
    for (const info of infos) {
      const found = await this.context.reader.positionAfterId(info.relid, from.after, db);
      // Whole batches only: the transactions in the one holding that change are read again.
      if (found) return { era: found.era, base: found.base };
    }
    throw new PgTideError('UNKNOWN_POSITION', `from.after: change ${from.after} of ${this.tables.join(', ')} is not in the log`, {
      table: this.tables.join(', '),
      after: from.after,
    });
  }

  /** A transaction stream has no events channel to say so: it waits silently, and logs it. */
  protected standby(consumer: string): void {
    this.context.logger.info(`pgtide: consumer ${JSON.stringify(consumer)} is read by another stream; waiting as its standby`, { consumer });
  }

  /**
   * Groups a batch by transaction. Transactions come in the order of their last change:
   * a transaction that changed a row after another committed wrote that change later, so
   * this order agrees with every row's commit order.
   */
  private emitBatch(batch: Batch, infos: readonly TableInfo[], before: Position): void {
    const byTxid = new Map<string, { changes: Change<Row>[]; tables: Set<number>; last: number }>();
    let order = 0;
    for (const { relid, row } of batch.rows) {
      if (row.op === 's') continue;
      const info = infos.find((candidate) => candidate.relid === relid)!;
      let change: Change<Row>;
      try {
        change = withRowSchema(toChange(row, info), this.options.schema);
      } catch (error) {
        this.fail(new RowValidationError(row.id, info.qualified, error));
        return;
      }
      let entry = byTxid.get(row.txid);
      if (!entry) byTxid.set(row.txid, (entry = { changes: [], tables: new Set(), last: 0 }));
      entry.changes.push(change);
      entry.tables.add(relid);
      entry.last = order++;
    }
    const transactions = [...byTxid.entries()].sort((a, b) => a[1].last - b[1].last);
    transactions.forEach(([txid, entry], index) => {
      if (this.ended) return;
      // Positions are saved between batches: only the batch's last transaction moves it.
      const position = index === transactions.length - 1 ? batch.next : before;
      const transaction: Transaction<Row> = {
        txid,
        changes: entry.changes,
        tables: this.tables.filter((_, tableIndex) => entry.tables.has(infos[tableIndex]!.relid)),
      };
      if (this.ledger) {
        const token = this.ledger.deliver(position, txid);
        recordDelivery(transaction, token);
        for (const change of entry.changes) recordDelivery(change, token);
      }
      this.subscriber.next(transaction);
    });
    if (transactions.length === 0) this.ledger?.pass(batch.next);
  }
}
