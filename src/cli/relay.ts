import type { StartFrom } from '../types.js';
import { CliFailure } from './errors.js';
import type { Session } from './session.js';

/** Options of `pgtide relay`. */
export interface RelayCommandOptions {
  /** NATS server URL(s), comma-separated. */
  readonly nats: string;
  readonly consumer: string;
  readonly stream?: string;
  readonly subjectPrefix?: string;
  readonly from: StartFrom;
  /** Milliseconds between status lines. */
  readonly statusInterval: number;
}

/**
 * `pgtide relay`: relays the tables' changes into JetStream until SIGINT or SIGTERM,
 * printing a status line every `statusInterval` (rewritten in place on a terminal).
 * Resolves with the exit code: 0 stopped by a signal, 1 the relay failed.
 */
export async function relay(session: Session, tables: readonly string[], options: RelayCommandOptions): Promise<number> {
  const [{ connect: connectNats }, { relayToJetStream }] = await Promise.all([
    importOptional<typeof import('@nats-io/transport-node')>('@nats-io/transport-node'),
    importOptional<typeof import('../nats.js')>('../nats.js'),
  ]);
  const nats = await connectNats({
    servers: options.nats.split(','),
    name: 'pgtide relay',
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  }).catch((error: unknown) => {
    throw new CliFailure(`cannot connect to NATS at ${options.nats}: ${error instanceof Error ? error.message : String(error)}`);
  });
  const { tide } = session;
  try {
    const running = await relayToJetStream(tide, {
      tables,
      consumer: options.consumer,
      nats,
      from: options.from,
      ...(options.stream !== undefined ? { stream: options.stream } : {}),
      ...(options.subjectPrefix !== undefined ? { subjectPrefix: options.subjectPrefix } : {}),
    });
    process.stderr.write(`pgtide: relaying ${tables.join(', ')} to JetStream at ${options.nats} as ${options.consumer} (Ctrl-C to stop)\n`);
    // The relay's consumers, one per table (see RelayOptions.consumer).
    const consumerPrefix = `${options.consumer}:`;
    const terminal = process.stdout.isTTY === true;
    const printStatus = async (final = false) => {
      const status = running.status();
      const lag = (await tide.consumers().catch(() => [])).filter((info) => info.name.startsWith(consumerPrefix));
      const lagChanges = lag.reduce((sum, info) => sum + info.lagChanges, 0);
      const lagSeconds = Math.max(0, ...lag.map((info) => info.lagSeconds));
      const line =
        `relayed ${status.relayed + status.inFlight} (${status.inFlight} in flight), ` +
        `acknowledged ${status.relayed} (${status.duplicates} duplicate${status.duplicates === 1 ? '' : 's'}), ` +
        `lag ${lagChanges} change${lagChanges === 1 ? '' : 's'} / ${lagSeconds.toFixed(1)} s` +
        (status.lastError && status.inFlight > 0 ? `, retrying: ${status.lastError}` : '');
      process.stdout.write(terminal && !final ? `\r${line}\u001b[K` : `${line}\n`);
    };
    const code = await new Promise<number>((resolve) => {
      const timer = setInterval(() => void printStatus(), options.statusInterval);
      const finish = (code: number) => {
        clearInterval(timer);
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        resolve(code);
      };
      const stop = () => {
        void running.close().then(
          () => finish(0),
          () => finish(1),
        );
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      running.done.catch((error: unknown) => {
        process.stderr.write(`pgtide: the relay stopped: ${error instanceof Error ? error.message : String(error)}\n`);
        finish(1);
      });
    });
    if (terminal) process.stdout.write('\n');
    await printStatus(true);
    process.stderr.write(code === 0 ? 'pgtide: relay stopped\n' : '');
    return code;
  } finally {
    await nats.drain().catch(() => undefined);
  }
}

/** Imports one of the bridge's optional peer dependencies, or says how to install them. */
async function importOptional<T>(specifier: string): Promise<T> {
  try {
    return (await import(specifier)) as T;
  } catch (error) {
    if ((error as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' || (error as { code?: string }).code === 'MODULE_NOT_FOUND') {
      throw new CliFailure(
        'pgtide relay needs the NATS client: npm install @nats-io/transport-node @nats-io/jetstream @nats-io/nats-core',
      );
    }
    throw error;
  }
}
