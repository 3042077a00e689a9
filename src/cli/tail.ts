import cliProgress from 'cli-progress';
import { filter, map, take, tap, type MonoTypeOperatorFunction } from 'rxjs';
import { acknowledge } from '../../operators/acknowledge.js';
import { describeTable } from '../catalog.js';
import type { Change, ChangesOptions, StartFrom, StreamEvent } from '../types.js';
import { describeError } from './errors.js';
import { formatChange, formatChangeJson } from './format.js';
import type { Session } from './session.js';

/** A replay at least this long gets a progress bar (when stderr is a terminal). */
export const PROGRESS_MIN_BACKLOG = 5_000;

export interface TailOptions {
  readonly columns?: readonly string[];
  readonly rowId?: unknown;
  readonly from: StartFrom;
  readonly consumer?: string;
  readonly json: boolean;
  /** Stop after this many changes. */
  readonly limit?: number;
  /** `false` with `--no-progress`. */
  readonly progress: boolean;
}

/**
 * Prints a table's changes until Ctrl-C (SIGINT), SIGTERM, `--limit`, or a closed
 * stdout. With `--consumer`, each change is acknowledged once printed, and the position
 * is saved when the command ends. Resolves to the exit code.
 */
export async function tail(session: Session, table: string, options: TailOptions): Promise<number> {
  const { tide } = session;
  const changesOptions: ChangesOptions = {
    from: options.from,
    ...(options.columns ? { columns: options.columns } : {}),
    ...(options.rowId !== undefined ? { rowId: options.rowId } : {}),
    ...(options.consumer !== undefined ? { consumer: options.consumer } : {}),
  };
  const progress = options.progress && wantsProgressBar() ? await startProgress(session, table, options) : undefined;
  const print = options.json ? formatChangeJson : formatChange;

  return new Promise<number>((resolve) => {
    let replayed = 0;
    let live = false;
    const finish = (code: number): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      process.stdout.off('error', onStdoutError);
      progress?.stop();
      resolve(code);
    };
    const stop = (): void => {
      subscription.unsubscribe();
      finish(0);
    };
    // `pgtide tail t | head` closes our stdout: that ends the command, quietly.
    const onStdoutError = (error: NodeJS.ErrnoException): void => {
      if (error.code !== 'EPIPE') process.stderr.write(`pgtide: cannot write output: ${error.message}\n`);
      subscription.unsubscribe();
      finish(error.code === 'EPIPE' ? 0 : 1);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    process.stdout.on('error', onStdoutError);

    const subscription = tide
      .events$(table, changesOptions)
      .pipe(
        tap((event) => {
          if (event.kind === 'standby') {
            process.stderr.write(`pgtide: consumer ${event.consumer} is read by another process; waiting as its standby\n`);
            return;
          }
          if (event.kind !== 'caught-up') return;
          live = true;
          progress?.stop();
          process.stderr.write(
            `pgtide: caught up after replaying ${replayed} change${replayed === 1 ? '' : 's'}; ` +
              `following ${table} (Ctrl-C to stop)\n`,
          );
        }),
        filter((event): event is Extract<StreamEvent, { kind: 'change' }> => event.kind === 'change'),
        map((event) => event.change),
        tap((change) => {
          process.stdout.write(`${print(change)}\n`);
          if (!live) {
            replayed += 1;
            progress?.increment();
          }
        }),
        // Printed means processed: the consumer's position moves past it.
        acknowledge(),
        limitTo(options.limit),
      )
      .subscribe({
        error: (error: unknown) => {
          progress?.stop();
          process.stderr.write(`pgtide: ${describeError(error, session.server)}\n`);
          finish(1);
        },
        complete: () => finish(0),
      });
  });
}

function limitTo(limit: number | undefined): MonoTypeOperatorFunction<Change> {
  return limit === undefined ? (source) => source : take(limit);
}

/**
 * A bar only helps someone watching a terminal whose screen the changes do not fill:
 * stderr a terminal, stdout redirected (`pgtide tail t --from beginning --json > changes.ndjson`).
 * When stdout is that terminal too, the printed changes are the progress, and a bar
 * redrawn between them would garble both.
 */
function wantsProgressBar(): boolean {
  return process.stderr.isTTY === true && process.stdout.isTTY !== true;
}

interface Progress {
  increment(): void;
  stop(): void;
}

/** A bar over the backlog, if it holds at least {@link PROGRESS_MIN_BACKLOG} changes. */
async function startProgress(session: Session, table: string, options: TailOptions): Promise<Progress | undefined> {
  const total = await backlogSize(session, table, options);
  if (total < PROGRESS_MIN_BACKLOG) return undefined;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: 'replaying {bar} {value}/{total} changes {percentage}% ETA {eta_formatted}',
      hideCursor: true,
      gracefulExit: false,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  let value = 0;
  let running = true;
  return {
    increment() {
      if (!running) return;
      value += 1;
      // Changes committed since the count was taken make the backlog longer.
      if (value > bar.getTotal()) bar.setTotal(value);
      bar.increment();
    },
    stop() {
      if (!running) return;
      running = false;
      bar.stop();
    },
  };
}

/** How many changes the stream will replay before it is live (an estimate: writes go on). */
async function backlogSize(session: Session, table: string, options: TailOptions): Promise<number> {
  const { pool, schemaIdent: s, tide } = session;
  if (options.consumer !== undefined) {
    const existing = (await tide.consumers()).find((consumer) => consumer.name === options.consumer);
    if (existing) return existing.lagChanges;
  }
  if (options.from === 'now') return 0;
  const { relid } = await describeTable(pool, table);
  if (options.from === 'beginning') {
    const { rows } = await pool.query<{ count: number }>(`SELECT count(*)::float8 AS count FROM ${s}.log WHERE relid = $1`, [relid]);
    return rows[0]!.count;
  }
  const { rows } = await pool.query<{ count: number }>(
    `SELECT count(*)::float8 AS count FROM ${s}.log l WHERE l.relid = $1 AND l.id > $2::int8`,
    [relid, options.from.after],
  );
  return rows[0]!.count;
}
