import { jetstreamManager } from '@nats-io/jetstream';
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers.js';
import { natsServerBinary, startNatsServer, type NatsServer } from '../nats-server.js';
import { runCli, startCli } from './run.js';

const describeWithNats = natsServerBinary ? describe : describe.skip;

let db: TestDatabase;
let server: NatsServer;
let nats: NatsConnection;

beforeAll(async () => {
  db = await createTestDatabase();
  server = await startNatsServer();
  nats = await connectNats({ servers: server.url });
  await db.pool.query('CREATE TABLE orders (id int PRIMARY KEY, total int)');
});

afterAll(async () => {
  await nats?.close();
  await server?.stop();
  await db?.drop();
});

describeWithNats('pgtide relay', () => {
  it('relays into JetStream with a status line (relayed, acknowledged, lag) and stops cleanly on SIGTERM', async () => {
    const relay = startCli(['--url', db.url, 'relay', '--nats', server.url, '--status-interval', '200ms', 'orders']);
    await relay.waitForStderr(/relaying orders to JetStream/);
    await db.pool.query('INSERT INTO orders SELECT g, g FROM generate_series(1, 25) g');
    await eventually(() => relay.lines().some((line) => line.startsWith('relayed 25 (0 in flight), acknowledged 25 (0 duplicates), lag 0 changes')), 'a status line with all 25 relayed and saved', 15_000);
    relay.child.kill('SIGTERM');
    const result = await relay.exited;
    expect(result.code).toBe(0);
    expect(result.stderr).toContain('pgtide: relay stopped');
    expect(result.stdout.trim().split('\n').at(-1)).toMatch(/^relayed 25 \(0 in flight\), acknowledged 25/);
    const info = await (await jetstreamManager(nats)).streams.info('PGTIDE');
    expect(info.state.messages).toBe(25);
    expect(info.config.subjects).toEqual(['pgtide.>']);
  }, 30_000);

  it('says when NATS cannot be reached, exit code 1', async () => {
    const result = await runCli(['--url', db.url, 'relay', '--nats', 'nats://127.0.0.1:1', 'orders']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^pgtide: cannot connect to NATS at nats:\/\/127\.0\.0\.1:1/);
  });

  it('needs --nats: exit code 2', async () => {
    const result = await runCli(['--url', db.url, 'relay', 'orders']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("required option '--nats <url>' not specified");
  });
});
