import type { ClientConfig } from 'pg';
import pgListen, { type Subscriber } from 'pg-listen';
import { backoffDelay } from './backoff.js';
import type { Logger } from './types.js';

// pg-listen is CommonJS with an `exports.default`; bundlers may unwrap it, Node does not.
const pgListenModule: unknown = pgListen;
const createSubscriber: typeof pgListen.default =
  typeof pgListenModule === 'function' ? (pgListenModule as typeof pgListen.default) : pgListen.default;

/** What the listener tells the rest of pgtide. */
export interface ListenerHandlers {
  /** A NOTIFY arrived for one table (payload: its oid). */
  nudge(relid: number): void;
  /** Notifications may have been missed (reconnected): every reader should look. */
  nudgeAll(): void;
  /** Prune expired this consumer (payload `expired:<name>`): its streams must stop. */
  expired(consumer: string): void;
  /** A consumer's dead letters are to be retried (`retry:<name>`), or a group's members changed (`group:<name>`). */
  signal(kind: 'retry' | 'group', name: string): void;
  /** LISTEN became unavailable (false) or available again (true). */
  status(listening: boolean): void;
}

/**
 * The one LISTEN connection of a Tide. Notifications carry a table oid, a latency hint
 * (the log is the truth, and readers poll while this is down), or the name of a consumer
 * that prune expired (its saves are refused too, so a missed one still stops it).
 */
export class Listener {
  private subscriber: Subscriber | undefined;
  private closed = false;
  private reopenTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  listening = false;

  constructor(
    private readonly config: ClientConfig,
    private readonly channel: string,
    private readonly handlers: ListenerHandlers,
    private readonly logger: Logger,
  ) {}

  /** Connects and LISTENs; rejects if the first connection fails. */
  async start(): Promise<void> {
    await this.open();
  }

  private async open(): Promise<void> {
    const subscriber = createSubscriber(
      { ...this.config, application_name: 'pgtide:listen' },
      {
        parse: (payload: string) => payload,
        retryLimit: Infinity,
        retryTimeout: 0,
        retryInterval: (attempt: number) => backoffDelay(attempt + 1),
        paranoidChecking: 10_000,
      },
    );
    this.subscriber = subscriber;
    subscriber.events.on('notification', ({ payload }) => {
      const text = String(payload);
      if (text.startsWith('expired:')) {
        this.handlers.expired(text.slice('expired:'.length));
        return;
      }
      const signal = /^(retry|group):/.exec(text);
      if (signal) {
        this.handlers.signal(signal[1] as 'retry' | 'group', text.slice(signal[0].length));
        return;
      }
      const relid = Number(text);
      if (Number.isInteger(relid)) this.handlers.nudge(relid);
      else this.handlers.nudgeAll();
    });
    subscriber.events.on('reconnect', (attempt) => {
      if (this.listening) {
        this.listening = false;
        this.handlers.status(false);
      }
      this.logger.warn('pgtide: LISTEN connection lost, reconnecting; reading the log by polling meanwhile', { attempt });
    });
    subscriber.events.on('connected', () => {
      // Also fires on the first connect, before LISTEN: only reconnects count here.
      if (this.listening || this.subscriber !== subscriber || subscriber.getSubscribedChannels().length === 0) return;
      this.becameListening();
    });
    subscriber.events.on('error', (error) => {
      this.logger.error('pgtide: LISTEN connection failed; polling the log until it is back', { error: error.message });
      if (this.listening) {
        this.listening = false;
        this.handlers.status(false);
      }
      this.scheduleReopen(subscriber);
    });
    await subscriber.connect();
    await subscriber.listenTo(this.channel);
    this.becameListening();
  }

  private becameListening(): void {
    this.failures = 0;
    this.listening = true;
    this.handlers.status(true);
    // Whatever committed while we were not listening is in the log: look now.
    this.handlers.nudgeAll();
  }

  private scheduleReopen(failed: Subscriber): void {
    if (this.closed || this.subscriber !== failed) return;
    failed.close().catch(() => undefined);
    this.failures += 1;
    this.reopenTimer = setTimeout(() => {
      this.open().catch((error: unknown) => {
        this.logger.warn('pgtide: LISTEN reconnect failed', { error: String(error) });
        this.scheduleReopen(this.subscriber!);
      });
    }, backoffDelay(this.failures));
  }

  /** Stops listening for good: no reconnect after this. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reopenTimer);
    this.listening = false;
    await this.subscriber?.close().catch(() => undefined);
  }
}
