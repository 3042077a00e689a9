/**
 * A relay process for `nats-relay.test.ts`. Usage:
 *
 *   node --import tsx test/reliability/relay-child.ts <dbUrl> <natsUrl> <table> <consumer> <stream> <subjectPrefix>
 *     <leaseTimeoutMs> <flushDelayMs> <duplicateWindowMs> <window> <publishTimeoutMs>
 *
 * Relays `<table>` into the JetStream stream `<stream>` with `relayToJetStream` (consumer
 * `<consumer>`, from the beginning, the stream created with `<duplicateWindowMs>` when it
 * is missing). Its NATS connection reconnects by itself, forever, so a nats-server restart
 * is something the relay rides out. Talks to the parent over IPC (see `child-ipc.ts`):
 * - `{ type: 'ready' }` once `relayToJetStream` resolved (reading, or a standby);
 * - `{ type: 'status', relayed, duplicates, retries, inFlight, phase, lastError }` every
 *   10 ms while its counts change (a SIGKILL may cut the last 10 ms off);
 * - `{ type: 'nats', status }` on each disconnect / reconnect of its NATS connection;
 * - `{ type: 'error', code, message }` if the relay fails;
 * - on the message `'stop'` (or SIGTERM) it closes the relay, then the Tide (which saves
 *   the consumer's position), sends its last status and exits 0.
 */
import { connect as connectNats } from '@nats-io/transport-node';
import { Subscription } from 'rxjs';
import { relayToJetStream, type RelayStatus } from '../../src/nats.js';
import { connectChild, reportStreamError, send, stopOnRequest } from './child-ipc.js';

const [dbUrl, natsUrl, table, consumer, stream, subjectPrefix, leaseTimeout, flushDelay, duplicateWindow, window, publishTimeout] =
  process.argv.slice(2);
if (!dbUrl || !natsUrl || !table || !consumer || !stream || !subjectPrefix || !leaseTimeout || !flushDelay || !duplicateWindow || !window || !publishTimeout) {
  console.error(
    'usage: relay-child.ts <dbUrl> <natsUrl> <table> <consumer> <stream> <subjectPrefix> <leaseTimeoutMs> <flushDelayMs> <duplicateWindowMs> <window> <publishTimeoutMs>',
  );
  process.exit(2);
}

const tide = await connectChild(dbUrl, 'relay child', Number(leaseTimeout), Number(flushDelay));
const nats = await connectNats({ servers: natsUrl, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
void (async () => {
  for await (const status of nats.status()) {
    if (status.type === 'disconnect' || status.type === 'reconnect') send({ type: 'nats', status: status.type });
  }
})();

const relay = await relayToJetStream(tide, {
  tables: [table],
  consumer,
  nats,
  stream,
  subjectPrefix,
  duplicateWindow: Number(duplicateWindow),
  window: Number(window),
  publishTimeout: Number(publishTimeout),
  from: 'beginning',
});

let last: RelayStatus | undefined;
const sendStatus = (): void => {
  const status = relay.status();
  if (status === last) return;
  last = status;
  const { relayed, duplicates, retries, inFlight, phase, lastError } = status;
  send({ type: 'status', relayed, duplicates, retries, inFlight, phase, lastError });
};
const ticker = setInterval(sendStatus, 10);
relay.done.catch((error: unknown) => {
  sendStatus();
  reportStreamError.error(error);
});
send({ type: 'ready' });
sendStatus();

// stopOnRequest unsubscribes, then closes the Tide: closing the relay first stops its
// reading, so the Tide saves the position of what JetStream acknowledged.
stopOnRequest(
  new Subscription(() => {
    clearInterval(ticker);
    void relay.close().catch(() => undefined);
    sendStatus();
  }),
  tide,
);
