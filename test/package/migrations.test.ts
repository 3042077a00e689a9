import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const sqlDir = fileURLToPath(new URL('../../sql/', import.meta.url));

/**
 * Shipped migrations are frozen: a database that ran one never runs it again, so an edit
 * would reach new installs only. A schema change is a new numbered file. Add a new file's
 * checksum here when it ships.
 */
const shipped: Record<string, string> = {
  '000001.sql': 'd1eb0d79a888a0f92bf86f7db71048d5cba9da0156a7127b48c62f5e52b73554',
  '000002.sql': 'dcbfdb005a5a826e1caa3341d1c682bff7705dd0a64d4f65f1c01f04e4c4494c',
  '000003.sql': 'b3cbb5df4df7151abdf7b6fa83d2174a4ee19abf3be21ab0a87114791154002f',
};

describe('migrations', () => {
  it('never change once shipped: every schema change is a new numbered file', () => {
    for (const [file, checksum] of Object.entries(shipped)) {
      const actual = createHash('sha256').update(readFileSync(join(sqlDir, file))).digest('hex');
      expect(actual, `${file} was edited after it shipped; put the change in a new migration`).toBe(checksum);
    }
  });

  it('are numbered without gaps, and every file is listed once it ships', () => {
    const files = readdirSync(sqlDir).filter((file) => /^\d{6}\.sql$/.test(file)).sort();
    expect(files.map((file) => Number(file.slice(0, 6)))).toEqual(files.map((_, index) => index + 1));
    expect(files.slice(0, Object.keys(shipped).length)).toEqual(Object.keys(shipped));
  });
});
