import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The nats-server binary (Debian's `nats-server` package; `.ci/run` installs it), or undefined. */
export const natsServerBinary: string | undefined = ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server'].find(
  (path) => existsSync(path),
) ?? (spawnSync('sh', ['-c', 'command -v nats-server']).stdout?.toString().trim() || undefined);

/** A real `nats-server -js` on a free loopback port, with its JetStream store in a temp dir. */
export interface NatsServer {
  readonly url: string;
  readonly port: number;
  /** Stops the server (SIGTERM, or SIGKILL with `kill`) and starts it again on the same port and store. */
  restart(options?: { kill?: boolean; downMs?: number }): Promise<void>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

async function waitForPort(port: number, timeout = 10_000): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeout;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function startNatsServer(): Promise<NatsServer> {
  if (!natsServerBinary) throw new Error('nats-server is not installed (apt-get install nats-server)');
  const port = await freePort();
  const store = mkdtempSync(join(tmpdir(), 'pgtide-nats-'));
  let child: ChildProcess | undefined;
  const start = async () => {
    child = spawn(natsServerBinary!, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', store], { stdio: 'ignore' });
    await waitForPort(port);
  };
  const halt = async (signal: NodeJS.Signals) => {
    const running = child;
    if (!running || running.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      running.once('exit', () => resolve());
      running.kill(signal);
    });
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    async restart(options = {}) {
      await halt(options.kill ? 'SIGKILL' : 'SIGTERM');
      if (options.downMs) await new Promise((resolve) => setTimeout(resolve, options.downMs));
      await start();
    },
    async stop() {
      await halt('SIGTERM');
      rmSync(store, { recursive: true, force: true });
    },
  };
}
