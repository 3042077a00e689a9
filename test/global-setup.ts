import type { TestProject } from 'vitest/node';
import { startPostgres, type EmbeddedPostgres } from '../src/embedded.js';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
  }
}

/** One real PostgreSQL for the whole run: DATABASE_URL if set, else an embedded server. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let server: EmbeddedPostgres | undefined;
  let url = process.env.DATABASE_URL;
  if (!url) {
    // Durability settings off: tests check behaviour, not crash safety of the test server.
    server = await startPostgres({ settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_prepared_transactions: 10 } });
    url = server.connectionString;
  }
  project.provide('databaseUrl', url);
  return async () => {
    await server?.destroy();
  };
}
