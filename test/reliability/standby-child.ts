/**
 * A consumer process for `consumer-standby.test.ts`. Usage:
 *
 *   node --import tsx test/reliability/standby-child.ts <url> <outFile> <table> <consumer> <leaseTimeoutMs> <flushDelayMs>
 *
 * Follows `<table>` as durable consumer `<consumer>` with `acknowledge()`; several of these
 * run at once with the same consumer name, so all but one wait as hot standbys. Each change
 * is handled in turn (`concatMap`) and takes 1-3 ms: when its handling starts, the change is
 * appended to `<outFile>` (shared by all children) as
 * `key<TAB>seq<TAB>changeId<TAB>pid<TAB>epochMs` with a synchronous write, and it is
 * acknowledged only once the handler is done, so a SIGKILL can lose an acknowledgement but
 * never a record of a delivery. Talks to the parent over IPC (each message carries `at`,
 * this process's `Date.now()`):
 * - `{ type: 'standby' }` when the stream reports another reader holds the consumer;
 * - `{ type: 'active' }` once, on its first delivered change or caught-up event;
 * - `{ type: 'error', code, message }` if the stream errors;
 * - on the message `'stop'` (or SIGTERM) it unsubscribes, closes the Tide (which saves the
 *   consumer's position and lets a standby take over) and exits 0.
 */
import { appendFileSync } from 'node:fs';
import { concatMap, filter, map, tap, timer } from 'rxjs';
import { acknowledge } from '../../operators/acknowledge.js';
import { connectChild, reportStreamError, send, stopOnRequest } from './child-ipc.js';

const [url, outFile, table, consumer, leaseTimeout, flushDelay] = process.argv.slice(2);
if (!url || !outFile || !table || !consumer || !leaseTimeout || !flushDelay) {
  console.error('usage: standby-child.ts <url> <outFile> <table> <consumer> <leaseTimeoutMs> <flushDelayMs>');
  process.exit(2);
}

const tide = await connectChild(url, 'child', Number(leaseTimeout), Number(flushDelay));

let active = false;
const becameActive = () => {
  if (active) return;
  active = true;
  send({ type: 'active' });
};

const subscription = tide
  .events$(table, { consumer, from: 'beginning' })
  .pipe(
    tap((event) => {
      if (event.kind === 'standby') send({ type: 'standby' });
      else if (event.kind === 'caught-up') becameActive();
    }),
    filter((event) => event.kind === 'change'),
    map((event) => event.change),
    concatMap((change) => {
      becameActive();
      const row = change.new ?? change.old ?? {};
      appendFileSync(
        outFile,
        `${String(change.key['id'])}\t${String(row['seq'])}\t${change.id}\t${process.pid}\t${Date.now()}\n`,
      );
      // The handler's work: a kill may land here, after the record but before the acknowledgement.
      return timer(1 + Math.floor(Math.random() * 3)).pipe(map(() => change));
    }),
    acknowledge(),
  )
  .subscribe(reportStreamError);
send({ type: 'ready' });

stopOnRequest(subscription, tide);
