/** Sizes and durations of one benchmark run (`--quick` shrinks them to stay under 2 minutes). */
export interface Settings {
  readonly quick: boolean;
  /** Measured runs per figure (each figure is their median, with min and max). */
  readonly runs: number;
  readonly warmupMs: number;
  /** One single-row INSERT run: this many slices of `insertSliceMs` per variant, alternating. */
  readonly insertSlices: number;
  readonly insertSliceMs: number;
  /** 10k-row statements per bulk INSERT measurement. */
  readonly bulkStatements: number;
  /** Length of one latency measurement at `latencyRate`. */
  readonly latencyMs: number;
  readonly latencyRate: number;
  /** Length of one latency measurement with an unrelated transaction open (or not), at `blockedRate`. */
  readonly blockedMs: number;
  readonly blockedRate: number;
  /** How long one idle Tide's queries are counted. */
  readonly idleMs: number;
  /** How long the writers write in one sustained-delivery run. */
  readonly sustainMs: number;
  /** Rows per statement of the sustained-delivery writers. */
  readonly sustainBatch: number;
  /** Runs of the slow rows (sustained delivery, replay). */
  readonly slowRuns: number;
  readonly replayChanges: number;
  readonly fanoutMs: number;
  readonly durableChanges: number;
}

export function settingsFor(quick: boolean): Settings {
  return quick
    ? {
        quick,
        runs: 3,
        warmupMs: 300,
        insertSlices: 2,
        insertSliceMs: 250,
        bulkStatements: 3,
        latencyMs: 1000,
        latencyRate: 1000,
        blockedMs: 2000,
        blockedRate: 200,
        idleMs: 5000,
        sustainMs: 1000,
        sustainBatch: 10_000,
        slowRuns: 3,
        replayChanges: 100_000,
        fanoutMs: 1000,
        durableChanges: 50_000,
      }
    : {
        quick,
        runs: 5,
        warmupMs: 500,
        insertSlices: 8,
        insertSliceMs: 250,
        bulkStatements: 10,
        latencyMs: 3000,
        latencyRate: 1000,
        blockedMs: 5000,
        blockedRate: 200,
        idleMs: 5000,
        sustainMs: 5000,
        sustainBatch: 10_000,
        slowRuns: 3,
        replayChanges: 1_000_000,
        fanoutMs: 3000,
        durableChanges: 300_000,
      };
}

/** The server under test. */
export interface BenchServer {
  readonly url: string;
  /** pid of its postmaster, for server CPU accounting (see lib/cpu.ts). */
  readonly postmaster: number;
}
