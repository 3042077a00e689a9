import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The repository root: the CLI runs from here, so `--import tsx` resolves. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The command under test, run from source through tsx exactly as `npm run cli` does. */
export const CLI = ['--import', 'tsx', fileURLToPath(new URL('../../src/cli.ts', import.meta.url))];

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Extra environment. DATABASE_URL is removed unless given here, so tests never pick up the caller's. */
  readonly env?: Readonly<Record<string, string>>;
  /** Kill the process after this many ms (the test then fails on its exit code). Default 20 s. */
  readonly timeout?: number;
}

function cliEnv(extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  if (!('DATABASE_URL' in extra)) delete env.DATABASE_URL;
  return env;
}

/** Runs `pgtide <args>` to completion. */
export function runCli(args: readonly string[], options: RunOptions = {}): Promise<CliResult> {
  const child = startCli(args, options);
  return child.exited;
}

/** A running `pgtide` process whose output is collected as it arrives. */
export interface RunningCli {
  readonly child: ChildProcessWithoutNullStreams;
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** Complete stdout lines so far. */
  readonly lines: () => string[];
  readonly exited: Promise<CliResult>;
  /** Resolves once stderr matches (e.g. the "caught up" notice); rejects if the process exits first or after `timeout`. */
  waitForStderr(pattern: RegExp, timeout?: number): Promise<void>;
  /** Resolves once stdout holds at least `count` complete lines. */
  waitForLines(count: number, timeout?: number): Promise<string[]>;
}

export function startCli(args: readonly string[], options: RunOptions = {}): RunningCli {
  const child = spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, env: cliEnv(options.env), stdio: 'pipe' });
  let stdout = '';
  let stderr = '';
  const listeners = new Set<() => void>();
  const notify = () => listeners.forEach((listener) => listener());
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    notify();
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    notify();
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), options.timeout ?? 20_000);
  let done = false;
  const exited = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      done = true;
      notify();
      resolve({ code, signal, stdout, stderr });
    });
  });
  const lines = () => stdout.split('\n').slice(0, -1);
  const waitFor = (check: () => boolean, what: string, timeout: number) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`timed out after ${timeout} ms waiting for ${what}; stderr: ${stderr}`)), timeout);
      const listener = () => {
        if (check()) finish();
        else if (done) finish(new Error(`pgtide exited before ${what}; stdout: ${stdout}; stderr: ${stderr}`));
      };
      const finish = (error?: Error) => {
        clearTimeout(timer);
        listeners.delete(listener);
        if (error) reject(error);
        else resolve();
      };
      listeners.add(listener);
      listener();
    });
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    lines,
    exited,
    waitForStderr: (pattern, timeout = 15_000) => waitFor(() => pattern.test(stderr), `stderr matching ${pattern}`, timeout),
    waitForLines: async (count, timeout = 15_000) => {
      await waitFor(() => lines().length >= count, `${count} lines of output`, timeout);
      return lines();
    },
  };
}

/** Whether util-linux `script` is here to give a command a terminal (Linux; always on Debian). */
export const canFakeTerminal =
  process.platform === 'linux' && (spawnSync('script', ['--version'], { encoding: 'utf8' }).stdout ?? '').includes('util-linux');

/** Runs `pgtide <args>` inside a pseudo-terminal (util-linux `script`), so stderr is a TTY; returns what the terminal showed. */
export function runCliInTerminal(shellCommandAfterCli: string, options: RunOptions = {}): Promise<CliResult> {
  const quoted = [process.execPath, ...CLI].map((part) => `'${part.replaceAll("'", `'\\''`)}'`).join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qefc', `${quoted} ${shellCommandAfterCli}`, '/dev/null'], {
      cwd: ROOT,
      env: cliEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const killer = setTimeout(() => child.kill('SIGKILL'), options.timeout ?? 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The last line a command wrote to stderr, asserting it wrote exactly one. */
export function oneLine(text: string): string {
  const lines = text.split('\n').filter((line) => line !== '');
  if (lines.length !== 1) throw new Error(`expected exactly one line, got ${lines.length}: ${JSON.stringify(text)}`);
  return lines[0]!;
}
