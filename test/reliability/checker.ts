/**
 * Counts what a fault-injection scenario produced and what the consumer saw. A row is
 * identified by `key`; each committed write of it carries a per-row sequence number
 * `seq` that grows in commit order (row locks serialise writers of one row). Deliveries
 * are grouped in sessions (one per consumer process or stream lifetime): within a
 * session, per-row order must follow `seq`; across sessions, redelivery is allowed
 * (at-least-once) but nothing may be missing.
 */
export interface Counts {
  readonly scenario: string;
  readonly produced: number;
  readonly delivered: number;
  readonly duplicates: number;
  readonly lost: number;
  readonly outOfOrder: number;
}

export class DeliveryChecker {
  private readonly produced = new Set<string>();
  private readonly seen = new Map<string, number>();
  private readonly lastSeqInSession = new Map<string, number>();
  private deliveredCount = 0;
  private outOfOrder = 0;
  private session = 0;
  readonly problems: string[] = [];

  constructor(readonly scenario: string) {}

  /** A committed write of row `key` with sequence `seq`. */
  produce(key: string | number, seq = 0): void {
    this.produced.add(`${key}#${seq}`);
  }

  /** A delivered change of row `key` carrying sequence `seq`. */
  deliver(key: string | number, seq = 0): void {
    const id = `${key}#${seq}`;
    this.deliveredCount += 1;
    this.seen.set(id, (this.seen.get(id) ?? 0) + 1);
    const rowKey = `${this.session}|${key}`;
    const last = this.lastSeqInSession.get(rowKey);
    if (last !== undefined && seq <= last) {
      this.outOfOrder += 1;
      if (this.problems.length < 10) this.problems.push(`row ${key}: seq ${seq} after ${last} in session ${this.session}`);
    }
    this.lastSeqInSession.set(rowKey, seq);
  }

  /** Starts a new delivery session (a restarted consumer). */
  newSession(): void {
    this.session += 1;
  }

  /** Whether every produced write has been delivered at least once. */
  complete(): boolean {
    for (const id of this.produced) if (!this.seen.has(id)) return false;
    return true;
  }

  counts(): Counts {
    let lost = 0;
    for (const id of this.produced) if (!this.seen.has(id)) lost += 1;
    let duplicates = 0;
    for (const times of this.seen.values()) duplicates += times - 1;
    const unexpected = [...this.seen.keys()].filter((id) => !this.produced.has(id));
    if (unexpected.length > 0) this.problems.push(`delivered but never committed: ${unexpected.slice(0, 5).join(', ')}`);
    return {
      scenario: this.scenario,
      produced: this.produced.size,
      delivered: this.deliveredCount,
      duplicates,
      lost,
      outOfOrder: this.outOfOrder,
    };
  }
}

const reported: Counts[] = [];

/** Records a scenario's counts and prints them as a table row. */
export function report(checker: DeliveryChecker): Counts {
  const counts = checker.counts();
  reported.push(counts);
  console.table([counts]);
  if (checker.problems.length > 0) console.log(`${checker.scenario} problems:`, checker.problems);
  return counts;
}
