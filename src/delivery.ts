import { PgTideError } from './errors.js';
import { samePosition, type Position } from './log.js';
import type { Change, Logger, Transaction } from './types.js';

/**
 * The key under which a durable stream's change carries its deliveries: a non-enumerable
 * symbol property, so it stays out of deep equality (tests compare changes with plain
 * objects) and of JSON. Copies (`{ ...change }`, `map` keeping the `id`) lose it and are
 * matched by id instead. `Symbol.for`: every copy of pgtide loaded in the process (an
 * ES module and a CommonJS one, say) uses the same key.
 */
const DELIVERIES: unique symbol = Symbol.for('pgtide.deliveries') as never;

/** One delivery of one durable stream: acknowledging it completes it in its ledger. */
export interface DeliveryToken {
  readonly target: AcknowledgementTarget;
  readonly number: number;
  /** The change id (or, for a transaction, its txid). */
  readonly id: string;
}

/** What a token acknowledges into; minimal, because other copies of pgtide call it. */
export interface AcknowledgementTarget {
  complete(number: number): void;
  ambiguous(id: string, streams: number): void;
  /**
   * Keeps the delivery as a dead letter (the handler gave up on it), then completes it.
   * Absent where nothing durable can keep it.
   */
  deadLetter?(number: number, error: string, attempts: number): Promise<void>;
  /** False where `deadLetter` exists but this target has nowhere to keep one. */
  readonly keepsDeadLetters?: boolean;
}

/**
 * What every copy of pgtide in the process shares, kept on `globalThis`: deliveries in
 * flight by change id (to acknowledge a change rebuilt from its id alone), and the
 * changes of streams without a consumer (their ids must not acknowledge anyone's).
 */
interface SharedRegistry {
  /** One token, or several when streams share a change id (kept lean: one entry per delivery). */
  readonly inFlightById: Map<string, DeliveryToken | DeliveryToken[]>;
  readonly unacknowledged: WeakSet<object>;
  openLedgers: number;
}

const registryKey = Symbol.for('pgtide.delivery-registry.v2');
const registry: SharedRegistry = ((globalThis as Record<symbol, unknown>)[registryKey] ??= {
  inFlightById: new Map(),
  unacknowledged: new WeakSet(),
  openLedgers: 0,
}) as SharedRegistry;

type Acknowledgeable = Change<unknown> | Transaction<unknown>;
type Carrier = { [DELIVERIES]?: readonly DeliveryToken[] };

/** What a stalled consumer is waiting for (see `Ledger`'s `onStall`). */
export interface Stall {
  /** Id of the oldest delivered change not yet processed. */
  readonly waitingFor: string;
  /** Since when the consumer's position has not moved past it. */
  readonly since: Date;
  /** Delivered changes behind it, and how many of those were processed already. */
  readonly behind: number;
  readonly processedBehind: number;
  /** Whether the stream stopped reading because `maxInFlight` changes are unprocessed. */
  readonly windowFull: boolean;
}

export interface LedgerOptions {
  /** Where the consumer stands before this stream delivers anything. */
  readonly start: Position;
  /** Writes the processed position; a `PgTideError` it rejects with ends the stream (see `onFatal`). */
  readonly save: (position: Position) => Promise<void>;
  /** Milliseconds a moved position may wait before it is written. */
  readonly flushDelay: number;
  readonly logger: Logger;
  /** Called synchronously whenever the processed position moves (test kits record it). */
  readonly onProcessed?: (position: Position) => void;
  /** The stream's in-flight window (for stall reports). */
  readonly maxInFlight?: number;
  /** Milliseconds the position may stand still behind processed changes before `onStall`; 0: never. */
  readonly stallTimeout?: number;
  readonly onStall?: (stall: Stall) => void;
  /** A save failed for good (the consumer expired, its lease was lost): the stream must end. */
  readonly onFatal?: (error: PgTideError) => void;
  /** Keeps a change the handler gave up on as a dead letter (durably, before it completes). */
  readonly deadLetter?: (changeId: string, error: string, attempts: number) => Promise<void>;
}

/** Codes of save failures that retrying cannot fix. */
const fatalSaveCodes = new Set(['CONSUMER_EXPIRED', 'CONSUMER_LEASE_LOST', 'UNKNOWN_CONSUMER']);

interface Slot {
  readonly position: Position;
  done: boolean;
  readonly token?: DeliveryToken;
}

/**
 * The processed/unprocessed bookkeeping of one durable consumer stream. Changes are
 * numbered in delivery order; the consumer's cursor is the position of the last change
 * of the longest fully processed prefix, so out-of-order completion (mergeMap) never
 * moves it past a change still being worked on. Cursor writes are batched.
 */
export class Ledger implements AcknowledgementTarget {
  private readonly slots: Slot[] = [];
  /** Index in `slots` of the first change not yet processed. */
  private head = 0;
  /** Deliveries not yet processed. */
  private unprocessed = 0;
  /** Delivery number of `slots[0]`. */
  private base = 0;
  private processed: Position;
  private saved: Position;
  private movedAt = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  /** The head delivery last reported as stalled (one report per stall). */
  private reportedStall: number | undefined;
  /** The head delivery the stall check last saw, and since when (checks run often enough). */
  private watchedHead: { readonly number: number; readonly since: number } | undefined;
  private lastAmbiguity = 0;
  private saving: Promise<void> = Promise.resolve();
  /** The position of the last save sent: it may have committed even if its answer never came. */
  private attempted: Position | undefined;
  private roomWaiters: Array<() => void> = [];
  private closed = false;

  constructor(private readonly options: LedgerOptions) {
    this.processed = options.start;
    this.saved = options.start;
    registry.openLedgers += 1;
    const stallTimeout = options.stallTimeout ?? 0;
    if (stallTimeout > 0 && options.onStall) {
      this.stallTimer = setInterval(() => this.checkStall(stallTimeout), Math.max(10, Math.min(1000, stallTimeout / 4)));
      this.stallTimer.unref();
    }
  }

  /** Delivered changes not yet processed (positions passed without delivering do not count). */
  get inFlight(): number {
    return this.unprocessed;
  }

  /** The position last written (or the start). */
  get savedPosition(): Position {
    return this.saved;
  }

  /**
   * Whether `position`, read back from the database after the connection was lost, is
   * this ledger's: the one it saved, or the one whose save was under way when the
   * connection went (it committed; the answer was lost). Then it is saved.
   */
  owns(position: Position): boolean {
    if (samePosition(this.saved, position)) return true;
    if (this.attempted === undefined || !samePosition(this.attempted, position)) return false;
    this.saved = this.attempted;
    return true;
  }

  /** The consumer's position as far as processing goes (saved or not). */
  get position(): Position {
    return this.processed;
  }

  /** Records a delivered change (or transaction) with this id; returns its token. */
  deliver(position: Position, id: string): DeliveryToken {
    const token: DeliveryToken = { target: this, number: this.base + this.slots.length, id };
    this.slots.push({ position, done: false, token });
    this.unprocessed += 1;
    const known = registry.inFlightById.get(id);
    if (known === undefined) registry.inFlightById.set(id, token);
    else if (Array.isArray(known)) known.push(token);
    else registry.inFlightById.set(id, [known, token]);
    return token;
  }

  /** Records a change that the stream filtered out: processed by definition. */
  pass(position: Position): void {
    if (this.inFlight === 0) {
      this.slots.length = 0;
      this.base += this.head;
      this.head = 0;
      this.advanceTo(position);
    } else {
      // Only the last of consecutive passed positions matters.
      const last = this.slots.length - 1;
      if (last > this.head && !this.slots[last]!.token) this.slots[last] = { position, done: true };
      else this.slots.push({ position, done: true });
    }
  }

  /** Marks one delivered change processed; the cursor moves if that closes a gap. */
  complete(number: number): void {
    const slot = this.slots[number - this.base];
    if (!slot || slot.done) return;
    slot.done = true;
    this.unprocessed -= 1;
    if (slot.token) forget(slot.token);
    for (const wake of this.roomWaiters.splice(0)) wake();
    if (number - this.base !== this.head) return;
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

  get keepsDeadLetters(): boolean {
    return this.options.deadLetter !== undefined;
  }

  /** Keeps one delivered change as a dead letter, then marks it processed. */
  async deadLetter(number: number, error: string, attempts: number): Promise<void> {
    const slot = this.slots[number - this.base];
    if (!slot?.token || slot.done) return;
    if (!this.options.deadLetter) throw new PgTideError('INVALID_OPTIONS', 'this stream keeps no dead letters', {});
    await this.options.deadLetter(slot.token.id, error, attempts);
    this.complete(number);
  }

  /** A change rebuilt from its id alone matched deliveries of several streams: none is acknowledged. */
  ambiguous(id: string, streams: number): void {
    if (Date.now() - this.lastAmbiguity < 10_000) return;
    this.lastAmbiguity = Date.now();
    this.options.logger.warn(
      `pgtide: a change acknowledged by id alone (${id}) is in flight in ${streams} consumer streams of this process; ` +
        'none was acknowledged. Keep the change object (or a spread copy, { ...change }) through the pipeline',
      { changeId: id, streams },
    );
  }

  /** Resolves once fewer than `limit` changes are in flight. */
  async roomFor(limit: number): Promise<void> {
    // Also bounded: what waits behind an unprocessed change (processed out of order).
    while ((this.inFlight >= limit || this.slots.length - this.head > 4 * limit) && !this.closed) {
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
      this.attempted = target;
      try {
        await this.options.save(target);
        this.saved = target;
      } catch (error) {
        if (error instanceof PgTideError && fatalSaveCodes.has(error.code)) {
          this.stop();
          this.options.onFatal?.(error);
          return;
        }
        this.options.logger.warn('pgtide: saving a consumer position failed; it will be retried', { error: String(error) });
        if (!this.closed) this.schedule();
      }
    });
    return this.saving;
  }

  /** Stops the ledger; with `flush`, writes the final position first. */
  close(flush: boolean): Promise<void> {
    this.stop();
    if (!flush) {
      clearTimeout(this.timer);
      return this.saving;
    }
    return this.flush();
  }

  private stop(): void {
    if (this.closed) return;
    this.closed = true;
    registry.openLedgers -= 1;
    clearInterval(this.stallTimer);
    for (let index = this.head; index < this.slots.length; index += 1) {
      const token = this.slots[index]!.token;
      if (token) forget(token);
    }
    for (const wake of this.roomWaiters.splice(0)) wake();
  }

  /** Positions arrive in delivery order, so each one given here is ahead of the last. */
  private advanceTo(position: Position): void {
    if (position === this.processed) return;
    this.processed = position;
    this.movedAt = Date.now();
    this.reportedStall = undefined;
    this.options.onProcessed?.(position);
    if (!this.closed) this.schedule();
    for (const wake of this.roomWaiters.splice(0)) wake();
  }

  private checkStall(stallTimeout: number): void {
    const waiting = this.slots[this.head];
    if (this.closed || !waiting?.token) return;
    const number = this.base + this.head;
    if (this.watchedHead?.number !== number) this.watchedHead = { number, since: Date.now() };
    const since = Math.max(this.movedAt, this.watchedHead.since);
    if (this.reportedStall === number || Date.now() - since < stallTimeout) return;
    // Deliveries behind it (not the positions the stream passed without delivering).
    let behind = 0;
    let processedBehind = 0;
    for (let index = this.head + 1; index < this.slots.length; index += 1) {
      const slot = this.slots[index]!;
      if (!slot.token) continue;
      behind += 1;
      if (slot.done) processedBehind += 1;
    }
    const windowFull = this.inFlight >= (this.options.maxInFlight ?? Infinity);
    if (processedBehind === 0 && !windowFull) return;
    this.reportedStall = number;
    this.options.onStall!({ waitingFor: waiting.token.id, since: new Date(since), behind, processedBehind, windowFull });
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => void this.flush(), this.options.flushDelay);
  }
}

function forget(token: DeliveryToken): void {
  const known = registry.inFlightById.get(token.id);
  if (known === token) {
    registry.inFlightById.delete(token.id);
  } else if (Array.isArray(known)) {
    const rest = known.filter((other) => other !== token);
    registry.inFlightById.set(token.id, rest.length === 1 ? rest[0]! : rest);
  }
}

/**
 * @internal Ties an emitted change (or transaction) of a durable stream to its
 * deliveries. The object must be the stream's own (never shared with another stream).
 */
export function recordDelivery(delivered: Acknowledgeable, token: DeliveryToken): void {
  setTokens(delivered, [token]);
}

function setTokens(carrier: Acknowledgeable, tokens: readonly DeliveryToken[]): void {
  Object.defineProperty(carrier, DELIVERIES, { value: tokens, writable: true, configurable: true });
}

/**
 * @internal Notes a change emitted by a stream without a consumer: its id must not
 * acknowledge a durable stream's delivery of the same change.
 */
export function recordUnacknowledged(delivered: Acknowledgeable): void {
  // Only needed while some durable stream could be matched by id.
  if (registry.openLedgers > 0) registry.unacknowledged.add(delivered);
}

/** The deliveries a value stands for: its own tokens, or those found by its id alone. */
function tokensOf(value: Acknowledgeable): readonly DeliveryToken[] {
  const carried = (value as Carrier)[DELIVERIES];
  if (carried !== undefined) return carried;
  if (registry.unacknowledged.has(value)) return [];
  const id = (value as { id?: unknown }).id;
  if (typeof id !== 'string') return [];
  const known = registry.inFlightById.get(id);
  if (known === undefined) return [];
  if (!Array.isArray(known)) return [known];
  known[0]!.target.ambiguous(id, known.length);
  return [];
}

/**
 * Marks a change of a durable consumer stream as processed (and every change it
 * carries, see {@link carryDelivery}), as `acknowledge()` does. Operators that drop
 * changes call it for the changes they drop, so a consumer's position is not held back
 * by a change nobody will acknowledge. A copy (`{ ...change }`, or one rebuilt by `map`
 * keeping its `id`) is matched by its id when exactly one consumer stream of the process
 * has that change in flight; when several have, nothing is acknowledged and a warning
 * says so (keep the original object, or tie the copy to it with {@link carryDelivery}).
 * A change that did not come from a durable consumer stream is ignored.
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
  for (const token of tokensOf(change)) token.target.complete(token.number);
}

/** @internal Whether every delivery `change` stands for has a consumer that keeps dead letters. */
export function canKeepAsDeadLetter(change: Change<unknown>): boolean {
  const tokens = tokensOf(change);
  return tokens.length > 0 && tokens.every(({ target }) => typeof target.deadLetter === 'function' && target.keepsDeadLetters !== false);
}

/**
 * @internal Keeps every delivery `change` stands for as a dead letter of its consumer
 * (see `processChanges`), each marked processed once it is kept. Resolves false, keeping
 * nothing, when some delivery has nowhere durable to go (a stream without a consumer).
 */
export async function keepAsDeadLetter(change: Change<unknown>, error: unknown, attempts: number): Promise<boolean> {
  if (!canKeepAsDeadLetter(change)) return false;
  const tokens = tokensOf(change);
  const message = error instanceof Error ? error.message : String(error);
  for (const token of tokens) await token.target.deadLetter!(token.number, message, attempts);
  return true;
}

/**
 * Makes `successor` stand for `original` too: acknowledging `successor` then also
 * marks `original` processed. For operators that build a new change from an old one
 * (projection, merge), and for those that let a later change of a row supersede an
 * earlier one (debounce, coalesce): the earlier change is done only once the change
 * carrying its effect is, so a crash in between delivers it again.
 */
export function carryDelivery(original: Change<unknown>, successor: Change<unknown>): void {
  if (original === successor) return;
  const carried = tokensOf(original);
  if (carried.length === 0) return;
  const own = (successor as Carrier)[DELIVERIES] ?? [];
  setTokens(successor, [...own, ...carried]);
}
