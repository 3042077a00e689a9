// A live subscriber of one table in its own process, as in production: changes$ (events$)
// drains the table while the parent writes. The parent asks `until` a number of changes
// have arrived; the answer carries this process's CPU time so far, so the parent can
// charge the subscriber's CPU to the writes it received.
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';

export interface DrainArgs {
  readonly url: string;
  readonly table: string;
}

/** The answer to `until`: changes received so far, and this process's CPU (user + system) so far, µs. */
export interface Drained {
  readonly count: number;
  readonly cpuMicros: number;
}

export default async function drain(args: DrainArgs, channel: Channel): Promise<Drained> {
  const tide = await connectTide(args.url);
  let count = 0;
  let waitingFor: number | undefined;
  const answer = () => {
    const cpu = process.cpuUsage();
    channel.send('reached', { count, cpuMicros: cpu.user + cpu.system } satisfies Drained);
  };
  let markCaughtUp!: () => void;
  const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
  const subscription = tide.events$(args.table).subscribe((event) => {
    if (event.kind !== 'change') return markCaughtUp();
    count += 1;
    if (waitingFor !== undefined && count >= waitingFor) {
      waitingFor = undefined;
      answer();
    }
  });
  await caughtUp;
  channel.send('ready');
  const stopped = channel.receive<undefined>('stop').then(() => undefined);
  for (;;) {
    const request = await Promise.race([channel.receive<number>('until'), stopped]);
    if (request === undefined) break;
    if (count >= request) answer();
    else waitingFor = request;
  }
  subscription.unsubscribe();
  await tide.close();
  const cpu = process.cpuUsage();
  return { count, cpuMicros: cpu.user + cpu.system };
}
