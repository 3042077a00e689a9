/**
 * The bridge to NATS JetStream: `relayToJetStream()` hands every change of some tables
 * to a JetStream stream (deduplicated by `Nats-Msg-Id`, each row in commit order), and
 * `fromJetStream()` reads them back, anywhere, as the same changes, acknowledged with
 * the same operators. Needs the optional peer dependencies `@nats-io/jetstream` and
 * `@nats-io/nats-core` (and `@nats-io/transport-node` to connect).
 *
 * @example
 * ```ts
 * import { connect as natsConnect } from '@nats-io/transport-node';
 * import { relayToJetStream, fromJetStream } from 'pgtide/nats';
 *
 * const nats = await natsConnect({ servers: 'localhost:4222' });
 * const relay = await relayToJetStream(tide, { tables: ['orders'], consumer: 'to-nats', nats });
 * fromJetStream(nats, { durable: 'billing', filter: 'pgtide.public.orders' })
 *   .pipe(processChanges(charge, { concurrency: 8 }))
 *   .subscribe();
 * ```
 *
 * @module pgtide/nats
 */
export * from '../../src/nats.js';
