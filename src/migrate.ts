import { createHash } from 'node:crypto';
import type { Pool } from 'pg';
import { PgTideError } from './errors.js';
import { migrations } from './migrations.generated.js';
import type { PoolClient } from 'pg';
import { inTransaction, type SchemaNames } from './sql.js';

/** The schema version this build of pgtide installs. */
export const latestVersion = migrations[migrations.length - 1]!.version;

/**
 * Brings the SDK's schema up to date: every pending migration, in one transaction,
 * under an advisory lock keyed on the schema name, so concurrent installers queue and
 * the later ones find nothing to do. A database ahead of this build is refused.
 * `target` stops at an earlier version (tests of upgrades).
 */
export async function migrate(pool: Pool, schema: SchemaNames, target: number = latestVersion): Promise<void> {
  // Fast path without the lock: an application role that cannot create schemas can
  // still connect to an installed database.
  if ((await installedVersion(pool, schema)) >= target) return;
  await inTransaction(pool, async (client) => {
    await client.query(`SET LOCAL lock_timeout = '60s'`);
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`pgtide:migrate:${schema.name}`]);
    await assertOwnSchema(client, schema);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema.ident}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${schema.ident}.migrations (
         version integer PRIMARY KEY,
         applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ version: number | null }>(
      `SELECT max(version) AS version FROM ${schema.ident}.migrations`,
    );
    const current = rows[0]?.version ?? 0;
    assertNotAhead(current, schema);
    for (const migration of migrations) {
      if (migration.version <= current || migration.version > target) continue;
      await client.query(`INSERT INTO ${schema.ident}.migrations (version) VALUES ($1)`, [migration.version]);
      await client.query(substitute(migration.sql, schema));
    }
  });
}

async function installedVersion(pool: Pool, schema: SchemaNames): Promise<number> {
  const { rows: found } = await pool.query<{ installed: boolean }>(
    `SELECT to_regclass(format('%I.migrations', $1::text)) IS NOT NULL AS installed`,
    [schema.name],
  );
  if (!found[0]?.installed) return 0;
  const { rows } = await pool.query<{ version: number | null }>(
    `SELECT max(version) AS version FROM ${schema.ident}.migrations`,
  );
  const version = rows[0]?.version ?? 0;
  assertNotAhead(version, schema);
  return version;
}

/**
 * pgtide revokes PUBLIC's rights on its schema and everything in it: installing into a
 * schema that already holds other objects (say `public`) would strip the application's
 * grants. Such a schema is refused; an existing empty one is fine.
 */
async function assertOwnSchema(client: PoolClient, schema: SchemaNames): Promise<void> {
  const { rows } = await client.query<{ foreign: boolean }>(
    `SELECT to_regclass(format('%I.migrations', n.nspname)) IS NULL
            AND (EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = n.oid)
                 OR EXISTS (SELECT FROM pg_proc p WHERE p.pronamespace = n.oid)
                 OR EXISTS (SELECT FROM pg_type t WHERE t.typnamespace = n.oid)) AS foreign
       FROM pg_namespace n WHERE n.nspname = $1`,
    [schema.name],
  );
  if (rows[0]?.foreign) {
    throw new PgTideError(
      'INVALID_OPTIONS',
      `schema: ${schema.ident} already holds other objects; pgtide needs a schema of its own (it revokes PUBLIC's rights there)`,
      { schema: schema.name },
    );
  }
}

function assertNotAhead(version: number, schema: SchemaNames): void {
  if (version > latestVersion) {
    throw new PgTideError(
      'SCHEMA_TOO_NEW',
      `schema ${schema.ident} is at version ${version}, newer than this pgtide (${latestVersion}); upgrade pgtide`,
      { schema: schema.name, version, supported: latestVersion },
    );
  }
}

function substitute(sql: string, schema: SchemaNames): string {
  // Function bodies are dollar-quoted ($$), and the schema name goes into them as a
  // literal: a name holding `$$` would end a body early. Bodies get a tag the name
  // does not contain.
  let tag = '$pgtide$';
  for (let counter = 0; schema.name.includes(tag) || schema.ident.includes(tag); counter += 1) tag = `$pgtide_${counter}$`;
  const values: Record<string, string> = {
    ':SCHEMA_LITERAL_IDENT': schema.identLiteral,
    ':SCHEMA': schema.ident,
    ':SCHEMA_KEY': `'${createHash('sha1').update(schema.name).digest('hex').slice(0, 16)}'`,
    ':CHANNEL': schema.literal,
  };
  return sql
    // Comments go first: a placeholder in one, replaced by a name holding a line break,
    // would end the comment and leave the rest of the name as SQL.
    .replace(/^[ \t]*--.*$/gm, '')
    .replaceAll('$$', tag)
    .replace(/:SCHEMA_LITERAL_IDENT|:SCHEMA_KEY|:SCHEMA|:CHANNEL/g, (token) => values[token]!);
}
