/**
 * A consumer-group member process for `consumer-group.test.ts`. Usage:
 *
 *   node --import tsx test/reliability/group-child.ts <url> <logFile> <table> <consumer> <leaseTimeoutMs> <flushDelayMs>
 *
 * Joins the group `<consumer>` on `<table>` (`events$(table, { consumer, group: true })`)
 * and handles every change it is given with `processChanges` (concurrency 8; the handler
 * takes 0-2 ms). Its own log file `<logFile>` gets one line per step, each written with a
 * synchronous append so a SIGKILL loses nothing that happened before it:
 *
 *   S<TAB>key<TAB>seq<TAB>changeId<TAB>us     the handler started on a change
 *   E<TAB>key<TAB>seq<TAB>changeId<TAB>us     the handler finished (it is acknowledged next)
 *   G<TAB>holds<TAB>partitions<TAB>members<TAB>us   a `group` event (holds: comma-separated)
 *
 * `us` is `process.hrtime.bigint()` in microseconds: CLOCK_MONOTONIC, one clock for every
 * process of the machine, so the parent can compare the children's intervals with each
 * other and with the moments it killed them. Talks to the parent over IPC (see
 * `child-ipc.ts`): `{ type: 'ready' }` once subscribed, `{ type: 'group', holds,
 * partitions, members, us }` on each group event, `{ type: 'error', ... }` if the stream
 * errors; on 'stop' or SIGTERM it unsubscribes, closes the Tide (which flushes its
 * acknowledgements and hands its partitions over) and exits 0.
 */
import { appendFileSync } from 'node:fs';
import { filter, map, tap } from 'rxjs';
import { processChanges } from '../../operators/processChanges.js';
import { connectChild, reportStreamError, send, stopOnRequest } from './child-ipc.js';

const [url, logFile, table, consumer, leaseTimeout, flushDelay] = process.argv.slice(2);
if (!url || !logFile || !table || !consumer || !leaseTimeout || !flushDelay) {
  console.error('usage: group-child.ts <url> <logFile> <table> <consumer> <leaseTimeoutMs> <flushDelayMs>');
  process.exit(2);
}

const micros = (): number => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const tide = await connectChild(url, 'group child', Number(leaseTimeout), Number(flushDelay));

const subscription = tide
  .events$(table, { consumer, group: true, from: 'beginning' })
  .pipe(
    tap((event) => {
      if (event.kind !== 'group') return;
      const group = event;
      const us = micros();
      appendFileSync(logFile, `G\t${group.holds.join(',')}\t${group.partitions}\t${group.members}\t${us}\n`);
      send({ type: 'group', holds: [...group.holds], partitions: group.partitions, members: group.members, member: group.member, us });
    }),
    filter((event) => event.kind === 'change'),
    map((event) => event.change),
    processChanges(
      async (change) => {
        const row = change.new ?? change.old ?? {};
        const what = `${String(change.key['id'])}\t${String(row['seq'])}\t${change.id}`;
        appendFileSync(logFile, `S\t${what}\t${micros()}\n`);
        // The work: a kill may land here, after the start and before the acknowledgement.
        await sleep(Math.floor(Math.random() * 3));
        appendFileSync(logFile, `E\t${what}\t${micros()}\n`);
      },
      { concurrency: 8 },
    ),
  )
  .subscribe(reportStreamError);
send({ type: 'ready' });

stopOnRequest(subscription, tide);
