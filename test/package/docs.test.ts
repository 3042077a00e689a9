import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const require = createRequire(import.meta.url);

describe('npm run docs', () => {
  const out = mkdtempSync(join(tmpdir(), 'pgtide-docs-'));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('generates the API reference of the eight entry points with typedoc', async () => {
    // `npm run docs` is `typedoc` with typedoc.json; only the output directory differs here.
    const typedoc = join(dirname(require.resolve('typedoc/package.json')), 'bin', 'typedoc');
    const output = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [typedoc, '--out', out], { cwd: ROOT, timeout: 120_000 }, (error, stdout, stderr) => {
        if (error) reject(new Error(`typedoc failed: ${error.message}\n${stdout}\n${stderr}`));
        else resolve(stdout + stderr);
      });
    });
    // Every public member is documented: typedoc reports neither errors nor warnings.
    expect(output).not.toMatch(/\[(warning|error)\]/);
    expect(output).toMatch(/html generated at/);
    for (const module of ['pgtide', 'pgtide_operators', 'pgtide_testing', 'pgtide_embedded', 'pgtide_nats', 'pgtide_metrics', 'pgtide_http', 'pgtide_client']) {
      expect(existsSync(join(out, 'modules', `${module}.html`))).toBe(true);
    }
    const connect = readFileSync(join(out, 'functions', 'pgtide.connect.html'), 'utf8');
    expect(connect).toContain('installs or upgrades the SDK');
    expect(existsSync(join(out, 'classes', 'pgtide.Tide.html'))).toBe(true);
    // The operators are documented once, under pgtide, which exports them too; pgtide/operators refers to them.
    expect(existsSync(join(out, 'functions', 'pgtide.batchChanges.html'))).toBe(true);
    expect(readFileSync(join(out, 'modules', 'pgtide_operators.html'), 'utf8')).toContain('#batchchanges');
    expect(existsSync(join(out, 'functions', 'pgtide_testing.createTestTide.html'))).toBe(true);
    expect(existsSync(join(out, 'functions', 'pgtide_embedded.startPostgres.html'))).toBe(true);
    expect(existsSync(join(out, 'functions', 'pgtide_nats.relayToJetStream.html'))).toBe(true);
  }, 120_000);
});
