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

/** One step of a group member's work on one change, as its log recorded it. */
export interface ProcessingRecord {
  /** Which member process (one name per process start). */
  readonly instance: string;
  /** `start`: the handler began; `end`: it finished (the change is acknowledged next). */
  readonly kind: 'start' | 'end';
  readonly key: number;
  readonly seq: number;
  readonly changeId: string;
  /** When, on one clock shared by every process (the same unit as every other time given). */
  readonly at: number;
}

/** {@link Counts} of a consumer-group scenario, plus what only a group can get wrong. */
export interface GroupCounts extends Counts {
  /** Two processings of one row at the same moment, not excused by a kill. */
  readonly overlaps: number;
  /** Overlaps with a member that was already being killed (after the signal, before it was gone). */
  readonly excusedOverlaps: number;
  /** Duplicates not explained by a killed member's unsaved work. */
  readonly unexplainedDuplicates: number;
  readonly kills: number;
}

/** What one kill cost: the work of the killed member that another member did again. */
export interface KillSummary {
  readonly instance: string;
  readonly sentAt: number;
  readonly exitedAt: number;
  /** Processings of the killed member done again by another member after the kill. */
  readonly redone: number;
  /** Of those, how many the killed member had finished (finished, not yet acknowledged or saved). */
  readonly redoneFinished: number;
  /** How long before the kill the oldest redone processing ended (or began, if unfinished). */
  readonly oldestRedoneBeforeKill: number;
  /** How soon after the kill another member began redoing the first of it (undefined if nothing was redone). */
  readonly firstRedoneAfterKill?: number;
}

interface Processing {
  readonly index: number;
  readonly instance: string;
  readonly key: number;
  readonly seq: number;
  readonly changeId: string;
  readonly start: number;
  end?: number;
}

/**
 * Checks the work of a consumer group from the members' start/end logs: every committed
 * write processed (started and finished) at least once; per row, writes first processed in
 * commit order, and each member's processings of a row in commit order; no two
 * processings of one row at the same moment (by two members, or twice in one); and a
 * change processed again only after the member that processed it before was killed (its
 * unsaved tail), never after a clean handover.
 *
 * A killed member's unfinished processing counts as running until the member was seen
 * gone (`exitedAt`). Overlap with a killed member is excused only when all of it lies
 * after the kill signal was sent and within `leaseTimeout` of it: the member was dying.
 * A redone processing whose earlier run ended more than `unsavedTail` before the kill
 * was acknowledged long before and should have been saved: it counts as unexplained.
 * Times are in any unit, the same for records, kills and options.
 */
export class GroupChecker {
  private readonly produced = new Set<string>();
  private readonly processings: Processing[] = [];
  private readonly open = new Map<string, Processing[]>();
  private readonly killed = new Map<string, { sentAt: number; exitedAt: number }>();
  private readonly exited = new Map<string, number>();
  private readonly strayEnds: string[] = [];
  readonly problems: string[] = [];

  constructor(
    readonly scenario: string,
    private readonly options: { readonly leaseTimeout: number; readonly unsavedTail: number },
  ) {}

  /** A committed write of row `key` with sequence `seq`. */
  produce(key: number, seq: number): void {
    this.produced.add(`${key}#${seq}`);
  }

  /** The members' records; each member's in the order it wrote them. */
  record(record: ProcessingRecord): void {
    const openKey = `${record.instance}|${record.changeId}`;
    if (record.kind === 'start') {
      const processing: Processing = {
        index: this.processings.length,
        instance: record.instance,
        key: record.key,
        seq: record.seq,
        changeId: record.changeId,
        start: record.at,
      };
      this.processings.push(processing);
      const list = this.open.get(openKey) ?? [];
      list.push(processing);
      this.open.set(openKey, list);
      return;
    }
    const processing = this.open.get(openKey)?.shift();
    if (processing === undefined) this.strayEnds.push(`${record.instance}: end of change ${record.changeId} without a start`);
    else processing.end = record.at;
  }

  /** `instance` was SIGKILLed: the signal went at `sentAt`, the process was seen gone at `exitedAt`. */
  kill(instance: string, sentAt: number, exitedAt: number): void {
    this.killed.set(instance, { sentAt, exitedAt });
    this.exited.set(instance, exitedAt);
  }

  /** `instance` stopped cleanly and exited at `exitedAt`. */
  stopped(instance: string, exitedAt: number): void {
    this.exited.set(instance, exitedAt);
  }

  private endOf(processing: Processing): number {
    return processing.end ?? this.exited.get(processing.instance) ?? Number.POSITIVE_INFINITY;
  }

  private readonly problemsOfKind = new Map<string, number>();

  /** Keeps the first few problems of each kind (`kind: ...`), so one kind does not hide the others. */
  private problem(text: string): void {
    const kind = text.slice(0, text.indexOf(':'));
    const seen = this.problemsOfKind.get(kind) ?? 0;
    this.problemsOfKind.set(kind, seen + 1);
    if (seen < 5) this.problems.push(text);
  }

  private describe(processing: Processing): string {
    const end = processing.end === undefined ? 'unfinished' : String(processing.end);
    return `${processing.instance} [${processing.start}, ${end}]`;
  }

  /** Whether every produced write was processed to its end. */
  complete(): boolean {
    const finished = new Set(this.processings.filter((p) => p.end !== undefined).map((p) => `${p.key}#${p.seq}`));
    for (const id of this.produced) if (!finished.has(id)) return false;
    return true;
  }

  counts(): GroupCounts {
    this.problems.length = 0; // counts() may be called again
    this.problemsOfKind.clear();
    for (const stray of this.strayEnds) this.problem(`stray end: ${stray}`);
    const byWrite = new Map<string, Processing[]>();
    const byKey = new Map<number, Processing[]>();
    for (const processing of this.processings) {
      const id = `${processing.key}#${processing.seq}`;
      byWrite.set(id, [...(byWrite.get(id) ?? []), processing]);
      const rows = byKey.get(processing.key) ?? [];
      rows.push(processing);
      byKey.set(processing.key, rows);
    }
    const byStart = (a: Processing, b: Processing) => a.start - b.start || a.index - b.index;

    // Lost: committed, never processed to the end. Unexpected: processed, never committed.
    let lost = 0;
    for (const id of this.produced) {
      if (!(byWrite.get(id) ?? []).some((p) => p.end !== undefined)) {
        lost += 1;
        this.problem(`lost: ${id} was never processed to its end`);
      }
    }
    const unexpected = [...byWrite.keys()].filter((id) => !this.produced.has(id));
    if (unexpected.length > 0) this.problem(`unexpected: processed but never committed: ${unexpected.slice(0, 5).join(', ')}`);

    // Duplicates: each processing after a write's first must follow a processing by a member
    // killed before it began, of work done shortly before the kill (or while it was dying).
    let duplicates = 0;
    let unexplainedDuplicates = 0;
    for (const [id, list] of byWrite) {
      list.sort(byStart);
      for (let index = 1; index < list.length; index += 1) {
        duplicates += 1;
        const previous = list[index - 1]!;
        const current = list[index]!;
        const kill = this.killed.get(previous.instance);
        // A killed member can still start work between the kill being sent and its death
        // (the signal takes a moment to land): that work is the member's unsaved tail too.
        if (kill === undefined || previous.start >= kill.exitedAt || current.start < kill.sentAt) {
          unexplainedDuplicates += 1;
          this.problem(`duplicate: ${id} by ${this.describe(current)} after ${this.describe(previous)}, which was not killed in between`);
        } else if (kill.sentAt - (previous.end ?? previous.start) > this.options.unsavedTail) {
          unexplainedDuplicates += 1;
          this.problem(
            `duplicate: ${id} by ${this.describe(current)}: ${previous.instance} had finished it ` +
              `${kill.sentAt - previous.end!} before its kill (acknowledged work done again)`,
          );
        }
      }
    }

    // Order: per member and row, each processing of a later write than the one before;
    // per row, writes first processed in commit order.
    const outOfOrder = new Set<number>();
    const lastSeq = new Map<string, Processing>();
    for (const processing of this.processings) {
      const rowKey = `${processing.instance}|${processing.key}`;
      const last = lastSeq.get(rowKey);
      if (last !== undefined && processing.seq <= last.seq) {
        outOfOrder.add(processing.index);
        this.problem(`order: ${processing.instance} row ${processing.key}: seq ${processing.seq} after seq ${last.seq}`);
      }
      lastSeq.set(rowKey, processing);
    }
    for (const [key, list] of byKey) {
      const firsts = new Map<number, Processing>();
      for (const processing of [...list].sort(byStart)) if (!firsts.has(processing.seq)) firsts.set(processing.seq, processing);
      let highest: Processing | undefined;
      for (const processing of firsts.values()) {
        if (highest !== undefined && processing.seq < highest.seq) {
          if (!outOfOrder.has(processing.index)) {
            outOfOrder.add(processing.index);
            this.problem(`order: row ${key}: seq ${processing.seq} first processed by ${this.describe(processing)}, after seq ${highest.seq} by ${this.describe(highest)}`);
          }
        } else {
          highest = processing;
        }
      }
    }

    // Overlaps: two processings of one row whose intervals intersect.
    let overlaps = 0;
    let excusedOverlaps = 0;
    for (const [key, list] of byKey) {
      list.sort(byStart);
      let active: Processing[] = [];
      for (const current of list) {
        active = active.filter((other) => this.endOf(other) > current.start);
        for (const other of active) {
          const from = current.start;
          const to = Math.min(this.endOf(current), this.endOf(other));
          // Two in one member are never excused; across members, only while one was dying.
          const dying =
            other.instance !== current.instance &&
            [other.instance, current.instance].some((instance) => {
              const kill = this.killed.get(instance);
              return kill !== undefined && from >= kill.sentAt && to <= kill.sentAt + this.options.leaseTimeout;
            });
          if (dying) {
            excusedOverlaps += 1;
          } else {
            overlaps += 1;
            this.problem(`overlap: row ${key}: seq ${other.seq} by ${this.describe(other)} and seq ${current.seq} by ${this.describe(current)}`);
          }
        }
        active.push(current);
      }
    }

    return {
      scenario: this.scenario,
      produced: this.produced.size,
      delivered: this.processings.length,
      duplicates,
      lost,
      outOfOrder: outOfOrder.size,
      overlaps,
      excusedOverlaps,
      unexplainedDuplicates,
      kills: this.killed.size,
    };
  }

  /** Per kill, what other members did again of the killed member's work. */
  killSummaries(): KillSummary[] {
    const byWrite = new Map<string, Processing[]>();
    for (const processing of this.processings) {
      const id = `${processing.key}#${processing.seq}`;
      byWrite.set(id, [...(byWrite.get(id) ?? []), processing]);
    }
    return [...this.killed.entries()].map(([instance, kill]) => {
      let redone = 0;
      let redoneFinished = 0;
      let oldest = 0;
      let first: number | undefined;
      for (const list of byWrite.values()) {
        const mine = list.find((p) => p.instance === instance);
        if (mine === undefined) continue;
        const again = list.filter((p) => p.instance !== instance && p.start >= kill.sentAt);
        if (again.length === 0) continue;
        for (const p of again) first = Math.min(first ?? p.start - kill.sentAt, p.start - kill.sentAt);
        redone += 1;
        if (mine.end !== undefined) redoneFinished += 1;
        oldest = Math.max(oldest, kill.sentAt - (mine.end ?? mine.start));
      }
      return { instance, sentAt: kill.sentAt, exitedAt: kill.exitedAt, redone, redoneFinished, oldestRedoneBeforeKill: oldest, firstRedoneAfterKill: first };
    });
  }

  /** Per member: processings started and finished, and the span of its work. */
  instanceSummaries(): Array<{ instance: string; started: number; finished: number; first?: number; last?: number }> {
    const summaries = new Map<string, { instance: string; started: number; finished: number; first?: number; last?: number }>();
    for (const processing of this.processings) {
      const summary = summaries.get(processing.instance) ?? { instance: processing.instance, started: 0, finished: 0 };
      summary.started += 1;
      if (processing.end !== undefined) summary.finished += 1;
      summary.first = Math.min(summary.first ?? processing.start, processing.start);
      summary.last = Math.max(summary.last ?? processing.start, processing.end ?? processing.start);
      summaries.set(processing.instance, summary);
    }
    return [...summaries.values()];
  }
}
