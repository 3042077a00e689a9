/**
 * What every consumer child process of the fault tests does the same way: tell the
 * parent how its stream ended, and shut down cleanly when asked ('stop' over IPC, or
 * SIGTERM), as an application does: unsubscribe (saves the processed position), then
 * close the Tide.
 */
import type { Subscription } from 'rxjs';
import { connect, PgTideError, type Tide } from '../../src/index.js';

/** Sends a message to the parent over IPC, stamped with the time it was sent (`at`). */
export const send = (message: Record<string, unknown>): void => {
  process.send?.({ ...message, at: Date.now() });
};

/** A subscriber's error handler: reports the error (with its PgTideError code) and fails the exit code. */
export const reportStreamError = {
  error: (error: unknown): void => {
    send({ type: 'error', code: error instanceof PgTideError ? error.code : undefined, message: String(error) });
    process.exitCode = 1;
  },
};

/** Stops `subscription` and closes `tide` on 'stop' or SIGTERM, then exits. */
export function stopOnRequest(subscription: Subscription, tide: Tide): void {
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    subscription.unsubscribe();
    await tide.close();
    process.disconnect?.();
    process.exit(process.exitCode ?? 0);
  };
  process.on('message', (message) => {
    if (message === 'stop') void stop();
  });
  process.on('SIGTERM', () => void stop());
}

/**
 * Connects a child's Tide: warnings tagged with the child's pid, no background prune,
 * the lease timeout and flush delay the test chose.
 */
export function connectChild(url: string, tag: string, leaseTimeout: number, acknowledgeFlushDelay: number): Promise<Tide> {
  const prefix = `[${tag} ${process.pid}]`;
  return connect({
    connectionString: url,
    logger: {
      debug: () => undefined,
      info: () => undefined,
      warn: (message: string, meta?: Record<string, unknown>) => console.warn(prefix, message, meta ?? ''),
      error: (message: string, meta?: Record<string, unknown>) => console.error(prefix, message, meta ?? ''),
    },
    pruneInterval: 0,
    leaseTimeout,
    acknowledgeFlushDelay,
  });
}
