import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** One change as a consumer child recorded it (see `consumer-child.ts`). */
export interface RecordedDelivery {
  readonly key: number;
  readonly seq: number;
  readonly changeId: string;
  /** `Date.now()` in the child when it was delivered. */
  readonly at: number;
}

/** A running `consumer-child.ts`. */
export interface ConsumerChild {
  readonly process: ChildProcess;
  readonly file: string;
  /** Resolves once the child has subscribed. */
  readonly ready: Promise<void>;
  /** Resolves when the child's stream reports `caught-up`. */
  readonly caughtUp: Promise<void>;
  /** Resolves when the child has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Stream errors the child reported over IPC. */
  readonly errors: string[];
}

const childScript = fileURLToPath(new URL('./consumer-child.ts', import.meta.url));

/**
 * Starts a consumer child process (`node --import tsx consumer-child.ts ...`). With
 * `acknowledgeFlushDelay`, the child's Tide uses it (a long one means positions are only
 * saved on a clean stop).
 */
export function spawnConsumerChild(
  url: string,
  file: string,
  table: string,
  consumer: string,
  acknowledgeFlushDelay?: number,
): ConsumerChild {
  const args = [childScript, url, file, table, consumer];
  if (acknowledgeFlushDelay !== undefined) args.push(String(acknowledgeFlushDelay));
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const errors: string[] = [];
  let markReady!: () => void;
  let markCaughtUp!: () => void;
  const ready = new Promise<void>((resolve) => (markReady = resolve));
  const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
  child.on('message', (message: { type?: string; code?: string; message?: string }) => {
    if (message.type === 'ready') markReady();
    else if (message.type === 'caught-up') markCaughtUp();
    else if (message.type === 'error') errors.push(`${message.code ?? 'raw'}: ${message.message ?? ''}`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { process: child, file, ready, caughtUp, exited, errors };
}

/**
 * The complete lines of a child's delivery file. A line cut short by SIGKILL (never seen
 * in practice: each line is one write) is ignored; its change was not acknowledged.
 */
export function readDeliveries(file: string): RecordedDelivery[] {
  if (!existsSync(file)) return [];
  const lines = readFileSync(file, 'utf8').split('\n');
  lines.pop(); // '' after the last newline, or an incomplete last line
  return lines.map((line) => {
    const [key, seq, changeId, at] = line.split('\t');
    return { key: Number(key), seq: Number(seq), changeId: changeId!, at: Number(at) };
  });
}
