/**
 * RequestParser on its own: every request, payload and skip reaches the sink once, in order, and
 * as soon as its last byte arrived, whatever the chunking; pause holds bytes at a request
 * boundary and resume replays them in order, including bytes fed from inside a sink call; a
 * parser stopped from inside a sink call parses nothing more. A property test checks random
 * streams against a model; the examples pin the edge cases (zero-length payloads and skips at
 * the end of a chunk).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as C from '../../src/nbd/protocol/constants.js';
import {
  PAYLOAD_COLLECT,
  PAYLOAD_NONE,
  PAYLOAD_SKIP,
  RequestParser,
  STOP,
  type HeaderPlan,
  type RequestHeader,
} from '../../src/nbd/server/request-parser.js';
import { encodeRequest } from './raw-client.js';
import { collectPayloads } from './payload-collector.js';

interface Recorder {
  parser: RequestParser;
  seen: string[];
}

/** A parser whose sink records every call and answers each header with `plan(req)`. */
function recorder(plan: (req: RequestHeader, parser: RequestParser) => HeaderPlan): Recorder {
  const seen: string[] = [];
  const parser: RequestParser = new RequestParser({
    onHeader: (req) => {
      seen.push(`h${req.cookieLo}`);
      return plan(req, parser);
    },
    ...collectPayloads((req, payload) => seen.push(`p${req.cookieLo}:${payload.toString('hex')}`)),
    onSkipped: (req) => seen.push(`s${req.cookieLo}`),
    onViolation: (reason) => seen.push(`v ${reason}`),
  });
  return { parser, seen };
}

const byCookie = (plans: Record<number, HeaderPlan>) => (req: RequestHeader) =>
  plans[req.cookieLo] ?? PAYLOAD_NONE;

test('a zero-length payload or skip at the end of a chunk is delivered with that chunk', () => {
  const { parser, seen } = recorder(byCookie({ 1: PAYLOAD_COLLECT, 2: PAYLOAD_SKIP }));
  parser.feed(encodeRequest(C.CMD_WRITE, 0, 0, 0, 1n));
  assert.deepEqual(seen, ['h1', 'p1:'], 'the empty payload, without waiting for more bytes');
  parser.feed(encodeRequest(C.CMD_WRITE, 0, 0, 0, 2n));
  assert.deepEqual(seen, ['h1', 'p1:', 'h2', 's2'], 'the empty skip, without waiting for more bytes');
});

test('a payload that exactly fills the rest of the chunk is delivered, and the next header parses', () => {
  const { parser, seen } = recorder(byCookie({ 1: PAYLOAD_COLLECT, 3: PAYLOAD_SKIP }));
  const payload = Buffer.from('abcdef');
  parser.feed(encodeRequest(C.CMD_WRITE, 0, payload.length, 0, 1n, payload));
  assert.deepEqual(seen, ['h1', `p1:${payload.toString('hex')}`]);
  parser.feed(
    Buffer.concat([encodeRequest(C.CMD_READ, 0, 1, 0, 2n), encodeRequest(C.CMD_WRITE, 0, 3, 0, 3n)]),
  );
  parser.feed(Buffer.from('xyz'));
  parser.feed(encodeRequest(C.CMD_READ, 0, 1, 0, 4n));
  assert.deepEqual(seen.slice(2), ['h2', 'h3', 's3', 'h4']);
});

test('pause holds every byte until resume, then replays in order', () => {
  const { parser, seen } = recorder(byCookie({ 2: PAYLOAD_COLLECT }));
  parser.pause();
  const a = encodeRequest(C.CMD_READ, 0, 1, 0, 1n);
  const b = encodeRequest(C.CMD_WRITE, 0, 2, 0, 2n, Buffer.from('hi'));
  parser.feed(a);
  parser.feed(b);
  assert.deepEqual(seen, [], 'nothing parsed while paused');
  assert.equal(parser.heldBytes, a.length + b.length);
  parser.resume();
  assert.deepEqual(seen, ['h1', 'h2', `p2:${Buffer.from('hi').toString('hex')}`]);
  assert.equal(parser.heldBytes, 0);
  assert.equal(parser.isPaused, false);
});

test('a pause from the sink takes effect at the request boundary; bytes fed meanwhile wait their turn', () => {
  let pauseAt = 2;
  const { parser, seen } = recorder((req, p) => {
    if (req.cookieLo === pauseAt) p.pause();
    return PAYLOAD_NONE;
  });
  const stream = Buffer.concat([1n, 2n, 3n, 4n].map((cookie) => encodeRequest(C.CMD_READ, 0, 1, 0, cookie)));
  parser.feed(stream);
  assert.deepEqual(seen, ['h1', 'h2'], 'stopped after the request that paused');
  assert.equal(parser.heldBytes, 2 * C.REQUEST_HEADER_BYTES);
  parser.feed(encodeRequest(C.CMD_READ, 0, 1, 0, 5n));
  assert.equal(parser.heldBytes, 3 * C.REQUEST_HEADER_BYTES);
  pauseAt = 4;
  parser.resume();
  assert.deepEqual(seen, ['h1', 'h2', 'h3', 'h4'], 'paused again by request 4');
  parser.resume();
  assert.deepEqual(seen, ['h1', 'h2', 'h3', 'h4', 'h5']);
  assert.equal(parser.heldBytes, 0);
});

test('bytes fed from inside a sink call while held bytes are replayed queue behind them', () => {
  let fedMore = false;
  const { parser, seen } = recorder((req, p) => {
    if (req.cookieLo === 1 && !fedMore) {
      fedMore = true;
      // Re-entrant: request 2 is still held, so request 3 must wait behind it.
      p.feed(encodeRequest(C.CMD_READ, 0, 1, 0, 3n));
    }
    return PAYLOAD_NONE;
  });
  parser.pause();
  parser.feed(encodeRequest(C.CMD_READ, 0, 1, 0, 1n));
  parser.feed(encodeRequest(C.CMD_READ, 0, 1, 0, 2n));
  parser.resume();
  assert.deepEqual(seen, ['h1', 'h2', 'h3']);
});

test('a parser stopped by the sink parses nothing more, and ignores later bytes even while paused', () => {
  const { parser, seen } = recorder((req, p) => {
    if (req.cookieLo === 2) p.stop();
    return req.cookieLo === 1 ? PAYLOAD_SKIP : PAYLOAD_NONE;
  });
  const stream = Buffer.concat([
    encodeRequest(C.CMD_WRITE, 0, 4, 0, 1n, Buffer.from('skip')),
    encodeRequest(C.CMD_READ, 0, 1, 0, 2n),
    encodeRequest(C.CMD_READ, 0, 1, 0, 3n),
    encodeRequest(C.CMD_WRITE, 0, 4, 0, 4n, Buffer.from('more')),
  ]);
  parser.feed(stream);
  assert.deepEqual(seen, ['h1', 's1', 'h2']);
  assert.equal(parser.stopped, true);
  parser.pause();
  parser.feed(encodeRequest(C.CMD_READ, 0, 1, 0, 5n));
  assert.equal(parser.heldBytes, 0, 'a stopped parser holds nothing');
  parser.resume();
  assert.deepEqual(seen, ['h1', 's1', 'h2']);

  // STOP from onHeader: the same.
  const other = recorder((req) => (req.cookieLo === 1 ? STOP : PAYLOAD_NONE));
  other.parser.feed(stream);
  assert.deepEqual(other.seen, ['h1']);
  assert.equal(other.parser.stopped, true);
});

test('a bad magic is one violation and nothing after it', () => {
  const { parser, seen } = recorder(() => PAYLOAD_NONE);
  const bad = encodeRequest(C.CMD_READ, 0, 1, 0, 2n);
  bad.writeUInt32BE(0xdeadbeef, 0);
  parser.feed(
    Buffer.concat([encodeRequest(C.CMD_READ, 0, 1, 0, 1n), bad, encodeRequest(C.CMD_READ, 0, 1, 0, 3n)]),
  );
  assert.deepEqual(seen, ['h1', 'v bad request magic 0xdeadbeef']);
  assert.equal(parser.stopped, true);
});

// ---- the model --------------------------------------------------------------------------------

const requestArb = fc.record({
  plan: fc.constantFrom<HeaderPlan>(PAYLOAD_NONE, PAYLOAD_COLLECT, PAYLOAD_SKIP),
  length: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 41, max: 70_000 })),
  fill: fc.integer({ min: 0, max: 255 }),
  pauseAfter: fc.boolean(),
});

test('random requests, chunkings and pauses: the sink sees exactly the model, in order', () => {
  fc.assert(
    fc.property(
      fc.array(requestArb, { minLength: 1, maxLength: 12 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (requests, cuts) => {
        const frames: Buffer[] = [];
        const expected: string[] = [];
        requests.forEach(({ plan, length, fill }, i) => {
          const cookie = i + 1;
          const carries = plan !== PAYLOAD_NONE;
          const payload = Buffer.alloc(carries ? length : 0, fill);
          frames.push(encodeRequest(C.CMD_WRITE, 0, length, 0, BigInt(cookie), payload));
          expected.push(`h${cookie}`);
          if (plan === PAYLOAD_COLLECT) expected.push(`p${cookie}:${payload.toString('hex')}`);
          if (plan === PAYLOAD_SKIP) expected.push(`s${cookie}`);
        });
        const stream = Buffer.concat(frames);
        const { parser, seen } = recorder((req, p) => {
          const r = requests[req.cookieLo - 1]!;
          if (r.pauseAfter) p.pause();
          return r.plan;
        });
        let at = 0;
        const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
        for (const cut of [...points, stream.length]) {
          parser.feed(stream.subarray(at, cut));
          at = cut;
          // A paused parser is resumed between chunks, as the socket drains.
          parser.resume();
        }
        while (parser.isPaused) parser.resume();
        assert.deepEqual(seen, expected);
        assert.equal(parser.heldBytes, 0);
      },
    ),
    // Fewer under `npm run test:mutation`, which runs this once per mutant.
    { numRuns: process.env.MUTATION === '1' ? 100 : 300 },
  );
});
