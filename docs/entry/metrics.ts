/**
 * Prometheus metrics of a Tide: `registerMetrics(tide, { registry })` registers pgtide's
 * collectors on a `prom-client` registry (an optional peer dependency, install it
 * alongside).
 *
 * @example
 * ```ts
 * import { Registry } from 'prom-client';
 * import { registerMetrics } from 'pgtide/metrics';
 *
 * const registry = new Registry();
 * registerMetrics(tide, { registry });
 * const text = await registry.metrics();
 * ```
 *
 * @module pgtide/metrics
 */
export * from '../../src/metrics.js';
