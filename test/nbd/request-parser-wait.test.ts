/**
 * The parser's WAIT plan (a request parked until the buffer budget grants it): whatever the
 * chunking and whichever headers are answered WAIT, the sink sees the same requests, in the
 * same order, with the same payloads, as without waiting; a parked header is offered again
 * exactly once per resume and nothing is parsed while it is parked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fc from 'fast-check';
import * as C from '../../src/nbd/protocol/constants.js';
import type { RequestHeader } from '../../src/nbd/server/request-parser.js';
import { PAYLOAD_COLLECT, PAYLOAD_NONE, RequestParser, WAIT } from '../../src/nbd/server/request-parser.js';
import { encodeRequest } from './raw-client.js';
import { collectPayloads } from './payload-collector.js';

test('RequestParser: WAIT parks a request and resume() replays it, under any chunking', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          write: fc.boolean(),
          length: fc.integer({ min: 1, max: 3000 }),
          waits: fc.integer({ min: 0, max: 2 }),
        }),
        { minLength: 1, maxLength: 12 },
      ),
      fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 8 }),
      (requests, steps) => {
        const frames = requests.map((r, i) =>
          r.write
            ? encodeRequest(C.CMD_WRITE, i, r.length, 0, BigInt(i), Buffer.alloc(r.length, i & 0xff))
            : encodeRequest(C.CMD_READ, i, r.length, 0, BigInt(i)),
        );
        const stream = Buffer.concat(frames);
        const seen: string[] = [];
        const waitsLeft = requests.map((r) => r.waits);
        let parked = -1;
        const parser = new RequestParser({
          onHeader: (req: RequestHeader) => {
            const i = req.cookieLo;
            assert.equal(parked, -1, 'nothing is parsed while a request is parked');
            if (waitsLeft[i] > 0) {
              waitsLeft[i]--;
              parked = i;
              return WAIT;
            }
            seen.push(`h${i}`);
            return req.type === C.CMD_WRITE ? PAYLOAD_COLLECT : PAYLOAD_NONE;
          },
          ...collectPayloads((req, payload) => {
            const i = req.cookieLo;
            seen.push(
              `p${i}:${payload.length === requests[i].length && payload.every((b) => b === (i & 0xff))}`,
            );
          }),
          onSkipped: () => seen.push('skipped'),
          onViolation: (reason) => seen.push(`violation ${reason}`),
        });
        let at = 0;
        let s = 0;
        while (at < stream.length || parked >= 0) {
          if (parked >= 0) {
            parked = -1;
            parser.resume();
            continue;
          }
          const step = steps[s++ % steps.length];
          parser.feed(stream.subarray(at, at + step));
          at += step;
        }
        const expected = requests.flatMap((r, i) => (r.write ? [`h${i}`, `p${i}:true`] : [`h${i}`]));
        assert.deepEqual(seen, expected);
      },
    ),
    // Fewer under `npm run test:mutation`, which runs this once per mutant.
    { numRuns: process.env.MUTATION === '1' ? 100 : 300 },
  );
});
