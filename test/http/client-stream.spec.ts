import fc from 'fast-check';
import { firstValueFrom, take, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { liveEvents, type LiveClientEvent } from '../../src/client.js';
import { encodeChange, encodeValues } from '../../src/codec.js';
import type { Change } from '../../src/types.js';

// pgtide/client reads Server-Sent Events however the network cuts them: the same events
// come out of any split of the same bytes (separators split across chunks, \r\n lines).

const change = (id: number, body: string): Change => ({
  id: String(id), txid: '9', schema: 'public', table: 'notes', op: 'update', key: { id },
  new: { id, body }, old: { id, body: '' }, changed: ['body'], committedAt: new Date(1_000 + id),
});

/** A response whose body is `text` in chunks cut at `cuts`. */
function fakeFetch(text: string, cuts: readonly number[]): typeof fetch {
  return (async () => {
    const bytes = new TextEncoder().encode(text);
    const points = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
    const chunks: Uint8Array[] = [];
    let at = 0;
    for (const point of [...points, bytes.length]) {
      if (point > at) chunks.push(bytes.slice(at, point));
      at = Math.max(at, point);
    }
    return new Response(new ReadableStream({ start(controller) { for (const chunk of chunks) controller.enqueue(chunk); controller.close(); } }));
  }) as typeof fetch;
}

describe('pgtide/client reading a live stream', () => {
  it('gets the same events from any chunking of the bytes, with \\n or \\r\\n line ends', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.string({ unit: fc.constantFrom('a', 'é', '"', '\\n', ':', ' ', '😀') }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.boolean(),
        async (bodies, cuts, crlf) => {
          const rows = bodies.map((body, index) => [String(index), encodeValues({ id: index, body })]);
          let text = `id: \nevent: snapshot\ndata: ${JSON.stringify({ reason: 'initial', rows })}\n\n: heartbeat\n\n`;
          bodies.forEach((body, index) => {
            text += `id: ${index + 1}\nevent: change\ndata: {"key":"${index}","change":${encodeChange(change(index + 1, body))}}\n\n`;
          });
          if (crlf) text = text.replaceAll('\n', '\r\n');
          const events = await firstValueFrom(
            liveEvents<{ id: number; body: string }>('http://test/live', { fetch: fakeFetch(text, cuts), backoff: () => 1 }).pipe(
              take(3 + bodies.length),
              toArray(),
            ),
          );
          const expected: Array<LiveClientEvent<{ id: number; body: string }>> = [
            { kind: 'status', status: 'connecting' },
            { kind: 'snapshot', reason: 'initial', rows: bodies.map((body, index) => [String(index), { id: index, body }] as const) },
            { kind: 'status', status: 'live' },
            ...bodies.map((body, index) => ({ kind: 'change' as const, key: String(index), change: change(index + 1, body) as Change<{ id: number; body: string }> })),
          ];
          expect(events).toEqual(expected);
        },
      ),
      { numRuns: 200 },
    );
  });
});
