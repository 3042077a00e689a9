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
  '000001.sql': '695eb1930b55d8ee6dc733ac52c56a183d7a18ffc44a8852eb2212bdf63734b8',
  '000002.sql': '3f66a7ec7791f07ed4d3264b4fd5907f615511009ff2cade25391d075e3fbaf4',
  '000003.sql': 'e953254ebcb550cf1540b8b48f73342a42df80b4acc3271ebb24093c9bd1a4b4',
  '000004.sql': 'aac1812700c1c5bf4c5bd455515e23639c302af059a3220857b053a1612c633f',
  '000005.sql': 'f3e0128fb6b48cd4777c4177e6bbaa8c4c66be07c26f27761ce98d5296e99438',
  '000006.sql': '6eebef75161b94006177d6c6326bff4b25c81a19d8e44f30332b660d23aa1308',
  '000007.sql': '7aadcff794f012e5beef0d0750517a6ff95345a433784bca33e2161f0bca7630',
  '000008.sql': '27f8537c9240034ea409da3109ab29e0ca67edb6cd2e3509903b97386b39b395',
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
