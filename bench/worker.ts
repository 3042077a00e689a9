// Entry point of a benchmark child process: `node --import tsx bench/worker.ts <job>`.
// Loads bench/jobs/<job>.ts, waits for its arguments, runs it and sends the result.
import { Mailbox, type Message } from './lib/jobs.js';

/** What a job gets to talk to the parent. */
export interface Channel {
  send(type: string, data?: unknown): void;
  receive<T>(type: string): Promise<T>;
}

export type JobMain = (args: never, channel: Channel) => Promise<unknown>;

const name = process.argv[2];
if (!name || !/^[a-z-]+$/.test(name) || !process.send) {
  console.error('usage: forked by bench/lib/jobs.ts with a job name');
  process.exit(2);
}
const mailbox = new Mailbox();
const rejecters = new Map<(data: unknown) => void, (error: Error) => void>();
process.on('message', (message: Message) => mailbox.put(message));
process.on('disconnect', () => process.exit(1));
const channel: Channel = {
  send: (type, data) => process.send!({ type, data }),
  receive: <T>(type: string) => mailbox.receive<T>(type, rejecters),
};

try {
  const job = (await import(`./jobs/${name}.js`)) as { default: JobMain };
  const args = await channel.receive<never>('args');
  const result = await job.default(args, channel);
  process.send({ type: 'result', data: result }, () => process.exit(0));
} catch (error) {
  const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.send({ type: 'error', data: text }, () => process.exit(1));
}
