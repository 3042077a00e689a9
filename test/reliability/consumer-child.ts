/**
 * A consumer process for `consumer-crash.test.ts`. Usage:
 *
 *   node --import tsx test/reliability/consumer-child.ts <url> <outFile> <table> <consumer> [flushDelayMs]
 *
 * Follows `<table>` as durable consumer `<consumer>` with `acknowledge()`. Each delivered
 * change is appended to `<outFile>` as `key<TAB>seq<TAB>changeId<TAB>epochMs` with a
 * synchronous write BEFORE it is acknowledged, so a SIGKILL can lose an acknowledgement
 * but never a record of a delivery. Talks to the parent over IPC:
 * - sends `{ type: 'ready' }` once subscribed, `{ type: 'caught-up' }` when the stream
 *   follows the live log, `{ type: 'error', code, message }` if the stream errors;
 * - on the message `'stop'` (or SIGTERM) it unsubscribes, closes the Tide (which saves the
 *   consumer's position) and exits 0.
 */
import { appendFileSync } from 'node:fs';
import { filter, map, tap } from 'rxjs';
import { acknowledge } from '../../operators/acknowledge.js';
import { connect } from '../../src/index.js';
import { reportStreamError, send, stopOnRequest } from './child-ipc.js';

const [url, outFile, table, consumer, flushDelay] = process.argv.slice(2);
if (!url || !outFile || !table || !consumer) {
  console.error('usage: consumer-child.ts <url> <outFile> <table> <consumer> [flushDelayMs]');
  process.exit(2);
}

const quiet = {
  debug: () => undefined,
  info: () => undefined,
  warn: (message: string, meta?: Record<string, unknown>) => console.warn('[child]', message, meta ?? ''),
  error: (message: string, meta?: Record<string, unknown>) => console.error('[child]', message, meta ?? ''),
};

const tide = await connect({
  connectionString: url,
  logger: quiet,
  pruneInterval: 0,
  ...(flushDelay === undefined ? {} : { acknowledgeFlushDelay: Number(flushDelay) }),
});
const subscription = tide
  .events$(table, { consumer, from: 'beginning' })
  .pipe(
    tap((event) => {
      if (event.kind === 'caught-up') send({ type: 'caught-up' });
    }),
    filter((event) => event.kind === 'change'),
    map((event) => event.change),
    tap((change) => {
      const row = change.new ?? change.old ?? {};
      appendFileSync(outFile, `${String(change.key['id'])}\t${String(row['seq'])}\t${change.id}\t${Date.now()}\n`);
    }),
    acknowledge(),
  )
  .subscribe(reportStreamError);
send({ type: 'ready' });

stopOnRequest(subscription, tide);
