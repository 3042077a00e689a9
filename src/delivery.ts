import type { Position } from './log.js';
import type { Change, Logger, Transaction } from './types.js';

/**
 * The processed/unprocessed bookkeeping of one durable consumer stream. Changes are
 * numbered in delivery order; the consumer's cursor is the position of the last change
 * of the longest fully processed prefix, so out-of-order completion (mergeMap) never
 * moves it past a change still being worked on. Cursor writes are batched.
 */
export class Ledger {
  private readonly slots: Array<{ readonly position: Position; done: boolean }> = [];
  /** Index in `slots` of the first change not yet processed. */
  private head = 0;
  /** Delivery number of `slots[0]`. */
  private base = 0;
  private processed: Position;
  private saved: Position;
  private timer: NodeJS.Timeout | undefined;
  private saving: Promise<void> = Promise.resolve();
  private roomWaiters: Array<() => void> = [];
  private closed = false;

  constructor(
    start: Position,
    private readonly save: (position: Position) => Promise<void>,
    private readonly flushDelay: number,
    private readonly logger: Logger,
    /** Called synchronously whenever the processed position moves (test kits record it). */
    private readonly onProcessed?: (position: Position) => void,
  ) {
    this.processed = start;
    this.saved = start;
  }

  /** Delivered changes not yet part of the processed prefix. */
  get inFlight(): number {
    return this.slots.length - this.head;
  }

  /** The consumer's position as far as processing goes (saved or not). */
  get position(): Position {
    return this.processed;
  }

  /** Records a delivered change; returns its delivery number. */
  deliver(position: Position): number {
    this.slots.push({ position, done: false });
    return this.base + this.slots.length - 1;
  }

  /** Records a change that the stream filtered out: processed by definition. */
  pass(position: Position): void {
    if (this.inFlight === 0) {
      this.slots.length = 0;
      this.base += this.head;
      this.head = 0;
      this.advanceTo(position);
    } else {
      this.slots.push({ position, done: true });
    }
  }

  /** Marks one delivered change processed; the cursor moves if that closes a gap. */
  complete(delivery: number): void {
    const slot = this.slots[delivery - this.base];
    if (!slot || slot.done) return;
    slot.done = true;
    let moved: Position | undefined;
    while (this.head < this.slots.length && this.slots[this.head]!.done) {
      moved = this.slots[this.head]!.position;
      this.head += 1;
    }
    if (this.head > 1024 && this.head * 2 > this.slots.length) {
      this.slots.splice(0, this.head);
      this.base += this.head;
      this.head = 0;
    }
    if (moved) this.advanceTo(moved);
  }

  /** Resolves once fewer than `limit` changes are in flight. */
  async roomFor(limit: number): Promise<void> {
    while (this.inFlight >= limit && !this.closed) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
  }

  /** Writes the processed position now (if it moved). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.saving = this.saving.then(async () => {
      const target = this.processed;
      if (target === this.saved) return;
      try {
        await this.save(target);
        this.saved = target;
      } catch (error) {
        this.logger.warn('pgtide: saving a consumer position failed; it will be retried', { error: String(error) });
        if (!this.closed) this.schedule();
      }
    });
    return this.saving;
  }

  /** Stops the ledger; with `flush`, writes the final position first. */
  close(flush: boolean): Promise<void> {
    this.closed = true;
    for (const wake of this.roomWaiters.splice(0)) wake();
    if (!flush) {
      clearTimeout(this.timer);
      return this.saving;
    }
    return this.flush();
  }

  /** Positions arrive in delivery order, so each one given here is ahead of the last. */
  private advanceTo(position: Position): void {
    if (position === this.processed) return;
    this.processed = position;
    this.onProcessed?.(position);
    if (!this.closed) this.schedule();
    for (const wake of this.roomWaiters.splice(0)) wake();
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => void this.flush(), this.flushDelay);
  }
}

interface Delivery {
  readonly ledger: Ledger;
  readonly number: number;
}

/** The deliveries a change stands for: its own, plus those of changes merged into it. */
const deliveries = new WeakMap<object, Delivery[]>();

/** @internal Ties an emitted change (or transaction) to its stream's ledger. */
export function recordDelivery(delivered: Change<unknown> | Transaction<unknown>, ledger: Ledger, number: number): void {
  deliveries.set(delivered, [{ ledger, number }]);
}

/**
 * Marks a change of a durable consumer stream as processed (and every change it
 * carries, see {@link carryDelivery}), as `acknowledge()` does. Operators that drop
 * changes call it for the changes they drop, so a consumer's position is not held back
 * by a change nobody will acknowledge. A change that did not come from a durable
 * consumer stream is ignored.
 *
 * @example
 * ```ts
 * // A custom filter that keeps acknowledgement moving:
 * const onlyBig = filter((change: Change<User>) => {
 *   const keep = change.new!.quota > 1e9;
 *   if (!keep) markProcessed(change);
 *   return keep;
 * });
 * ```
 */
export function markProcessed(change: Change<unknown> | Transaction<unknown>): void {
  for (const delivery of deliveries.get(change) ?? []) delivery.ledger.complete(delivery.number);
}

/**
 * Makes `successor` stand for `original` too: acknowledging `successor` then also
 * marks `original` processed. For operators that build a new change from an old one
 * (projection, merge), and for those that let a later change of a row supersede an
 * earlier one (debounce, coalesce): the earlier change is done only once the change
 * carrying its effect is, so a crash in between delivers it again.
 */
export function carryDelivery(original: Change<unknown>, successor: Change<unknown>): void {
  const carried = deliveries.get(original);
  if (!carried || original === successor) return;
  deliveries.set(successor, [...(deliveries.get(successor) ?? []), ...carried]);
}
