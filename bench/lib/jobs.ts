// Child processes for the parts of the benchmark whose CPU or memory must be measured on
// their own (replay RSS, fan-out RSS) or must not share an event loop with the writers.
// The parent forks bench/worker.ts with a job name; messages are { type, data }.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Message {
  readonly type: string;
  readonly data?: unknown;
}

/** A message queue over a process channel: `receive(type)` resolves with the next message of that type. */
export class Mailbox {
  private readonly queued: Message[] = [];
  private readonly waiting: Array<{ type: string; resolve: (data: unknown) => void }> = [];
  private failure: Error | undefined;

  put(message: Message): void {
    const index = this.waiting.findIndex((waiter) => waiter.type === message.type);
    if (index >= 0) {
      const [waiter] = this.waiting.splice(index, 1);
      waiter!.resolve(message.data);
    } else {
      this.queued.push(message);
    }
  }

  fail(error: Error, reject: Map<(data: unknown) => void, (error: Error) => void>): void {
    this.failure = error;
    for (const waiter of this.waiting.splice(0)) reject.get(waiter.resolve)?.(error);
  }

  receive<T>(type: string, rejecters: Map<(data: unknown) => void, (error: Error) => void>): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    const index = this.queued.findIndex((message) => message.type === type);
    if (index >= 0) {
      const [message] = this.queued.splice(index, 1);
      return Promise.resolve(message!.data as T);
    }
    return new Promise<T>((resolve, reject) => {
      const settle = (data: unknown) => {
        rejecters.delete(settle);
        resolve(data as T);
      };
      rejecters.set(settle, reject);
      this.waiting.push({ type, resolve: settle });
    });
  }
}

const here = dirname(fileURLToPath(import.meta.url));
const workerPath = join(here, '..', 'worker.ts');

/** Where `--cpu-prof` profiles go when BENCH_CPU_PROF is set (a directory). */
function profileArgs(job: string): string[] {
  const directory = process.env.BENCH_CPU_PROF;
  if (!directory) return [];
  mkdirSync(directory, { recursive: true });
  return ['--cpu-prof', `--cpu-prof-dir=${directory}`, `--cpu-prof-name=${job}-${Date.now()}.cpuprofile`];
}

/** A running child job. */
export class Job {
  private readonly mailbox = new Mailbox();
  private readonly rejecters = new Map<(data: unknown) => void, (error: Error) => void>();
  private readonly child: ChildProcess;
  private readonly exited: Promise<number | null>;
  private stderr = '';

  constructor(
    readonly name: string,
    args: unknown,
  ) {
    this.child = fork(workerPath, [name], {
      execArgv: ['--import', 'tsx', '--expose-gc', ...profileArgs(name)],
      stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
      serialization: 'advanced',
    });
    this.child.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (this.stderr.length > 20_000) this.stderr = this.stderr.slice(-20_000);
    });
    this.child.on('message', (message: Message) => {
      if (message.type === 'error') {
        this.mailbox.fail(new Error(`job ${name} failed: ${String(message.data)}`), this.rejecters);
      } else {
        this.mailbox.put(message);
      }
    });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code) => {
        if (code !== 0) this.mailbox.fail(new Error(`job ${name} exited with ${code}: ${this.stderr}`), this.rejecters);
        resolve(code);
      });
    });
    this.child.send({ type: 'args', data: args });
  }

  send(type: string, data?: unknown): void {
    this.child.send({ type, data });
  }

  receive<T>(type: string): Promise<T> {
    return this.mailbox.receive<T>(type, this.rejecters);
  }

  /** Waits for the job's result and its exit. */
  async result<T>(): Promise<T> {
    const result = await this.receive<T>('result');
    await this.exited;
    return result;
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

/** Runs a one-shot job to completion. */
export async function runJob<T>(name: string, args: unknown): Promise<T> {
  const job = new Job(name, args);
  try {
    return await job.result<T>();
  } finally {
    job.kill();
  }
}
