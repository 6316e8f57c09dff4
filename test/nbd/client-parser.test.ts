/**
 * Property tests of the client's reply parser (fast-check, under a time budget):
 *   - random valid reply streams (simple and structured; data and hole chunks in any order,
 *     errors, block status for two contexts, replies of many requests interleaved) parse to
 *     the expected outcome, and to the same outcome whatever the chunk boundaries;
 *   - random garbage and corrupted valid streams never make the parser throw and never hang:
 *     it either finishes replies or reports one violation and stops;
 *   - over a socket, garbage from a server fails every request with MF_NBD_PROTOCOL (or
 *     MF_CONNECTION_CLOSED when the garbage ends mid-frame and the server hangs up).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/index.js';
import { InflightTable } from '../../src/nbd/client/inflight.js';
import { ReplyParser } from '../../src/nbd/client/reply-parser.js';
import * as C from '../../src/nbd/protocol/constants.js';
import { chunkHeader, FakeServer, simpleReply, u64 } from './client-fake-server.js';
import { rng } from './client-suite.js';

const TIME_MS = 3_000;
const CONTEXT_IDS = [3, 9];

type Kind = 'read' | 'write' | 'flush' | 'trim' | 'status';

interface Request {
  kind: Kind;
  offset: number;
  length: number;
  reqOne: boolean;
}

interface Outcome {
  errno: number;
  message: string;
  data: string | undefined;
  extents: number[] | undefined;
}

interface Built {
  stream: Buffer;
  expected: Outcome[];
}

const COMMAND: Record<Kind, number> = {
  read: C.CMD_READ,
  write: C.CMD_WRITE,
  flush: C.CMD_FLUSH,
  trim: C.CMD_TRIM,
  status: C.CMD_BLOCK_STATUS,
};

function errorChunk(flags: number, req: Cookie, errno: number, message: string, offset?: number): Buffer {
  const text = Buffer.from(message);
  const type = offset === undefined ? C.REPLY_TYPE_ERROR : C.REPLY_TYPE_ERROR_OFFSET;
  const fields = Buffer.alloc(6);
  fields.writeUInt32BE(errno, 0);
  fields.writeUInt16BE(text.length, 4);
  const tail = offset === undefined ? [] : [u64(offset)];
  const length = 6 + text.length + (offset === undefined ? 0 : 8);
  return Buffer.concat([chunkHeader(flags, type, req, length), fields, text, ...tail]);
}

interface Cookie {
  cookieHi: number;
  cookieLo: number;
}

/** The table the parser sees: one slot per request, in order. */
function setUp(requests: Request[]): { table: InflightTable; cookies: Cookie[]; dsts: Array<Buffer | null> } {
  const table = new InflightTable(64);
  const cookies: Cookie[] = [];
  const dsts: Array<Buffer | null> = [];
  for (const r of requests) {
    const command = COMMAND[r.kind];
    const s = table.acquire({}, command, r.reqOne ? C.CMD_FLAG_REQ_ONE : 0, r.offset, r.length, false);
    const dst = r.kind === 'read' ? Buffer.alloc(r.length, 0xcc) : null;
    table.dst[s] = dst;
    table.statusContext[s] = r.kind === 'status' ? 0 : -1;
    cookies.push({ cookieHi: s, cookieLo: table.seq[s] });
    dsts.push(dst);
  }
  return { table, cookies, dsts };
}

/** A valid reply stream for `requests`, chunks of different replies interleaved at random. */
function build(requests: Request[], structured: boolean, seed: number): Built {
  const random = rng(seed);
  const pick = (n: number): number => Math.floor(random() * n);
  const { cookies } = setUp(requests);
  const queues: Buffer[][] = [];
  const expected: Outcome[] = [];
  requests.forEach((r, i) => {
    const cookie = cookies[i];
    const parts: Buffer[] = [];
    const failing = random() < 0.2;
    const errno = [C.EIO, C.EINVAL, C.ENOSPC, C.EPERM][pick(4)];
    const outcome: Outcome = { errno: 0, message: '', data: undefined, extents: undefined };
    if (!structured) {
      if (failing) {
        parts.push(simpleReply(errno, cookie));
        outcome.errno = errno;
      } else if (r.kind === 'read') {
        const content = Buffer.alloc(r.length);
        for (let k = 0; k < content.length; k++) content[k] = pick(256);
        parts.push(Buffer.concat([simpleReply(0, cookie), content]));
        outcome.data = content.toString('hex');
      } else {
        parts.push(simpleReply(0, cookie));
      }
    } else if (r.kind === 'read') {
      // Split [offset, offset + length) into data and hole pieces, sent in a random order.
      const content = Buffer.alloc(r.length);
      const pieces: Array<{ at: number; length: number; hole: boolean }> = [];
      for (let at = 0; at < r.length;) {
        const length = Math.min(r.length - at, 1 + pick(r.length));
        const hole = random() < 0.3;
        if (!hole) for (let k = 0; k < length; k++) content[at + k] = 1 + pick(255);
        pieces.push({ at, length, hole });
        at += length;
      }
      for (let k = pieces.length - 1; k > 0; k--) {
        const j = pick(k + 1);
        [pieces[k], pieces[j]] = [pieces[j], pieces[k]];
      }
      const sent = failing ? pieces.slice(0, pick(pieces.length)) : pieces;
      for (const p of sent) {
        if (p.hole) {
          const body = Buffer.alloc(12);
          body.set(u64(r.offset + p.at), 0);
          body.writeUInt32BE(p.length, 8);
          parts.push(Buffer.concat([chunkHeader(0, C.REPLY_TYPE_OFFSET_HOLE, cookie, 12), body]));
        } else {
          parts.push(
            Buffer.concat([
              chunkHeader(0, C.REPLY_TYPE_OFFSET_DATA, cookie, 8 + p.length),
              u64(r.offset + p.at),
              content.subarray(p.at, p.at + p.length),
            ]),
          );
        }
      }
      if (failing) {
        const offset = random() < 0.5 ? r.offset + pick(r.length) : undefined;
        parts.push(errorChunk(0, cookie, errno, `read failed ${seed}`, offset));
        outcome.errno = errno;
        outcome.message = `read failed ${seed}`;
      } else {
        outcome.data = content.toString('hex');
      }
    } else if (r.kind === 'status') {
      if (failing) {
        parts.push(errorChunk(0, cookie, errno, 'no status'));
        outcome.errno = errno;
        outcome.message = 'no status';
      } else {
        const order = random() < 0.5 ? [0, 1] : [1, 0];
        for (const index of order) {
          const count = r.reqOne ? 1 : 1 + pick(5);
          const body = Buffer.alloc(4 + 8 * count);
          body.writeUInt32BE(CONTEXT_IDS[index], 0);
          const pairs: number[] = [];
          for (let k = 0; k < count; k++) {
            const length = r.reqOne ? 1 + pick(r.length) : 1 + pick(2 * r.length);
            const flags = pick(4);
            body.writeUInt32BE(length, 4 + 8 * k);
            body.writeUInt32BE(flags, 8 + 8 * k);
            pairs.push(length, flags);
          }
          parts.push(Buffer.concat([chunkHeader(0, C.REPLY_TYPE_BLOCK_STATUS, cookie, body.length), body]));
          if (index === 0) outcome.extents = pairs;
        }
      }
    } else if (failing) {
      if (random() < 0.5) parts.push(simpleReply(errno, cookie));
      else parts.push(errorChunk(0, cookie, errno, 'refused'));
      outcome.errno = errno;
      outcome.message = parts.length === 1 && parts[0].length > 16 ? 'refused' : '';
    } else if (random() < 0.5) {
      parts.push(simpleReply(0, cookie));
    }
    // Finish: DONE on the last chunk, or a NONE chunk.
    const last = parts.length - 1;
    const isSimple = (b: Buffer): boolean => b.readUInt32BE(0) === C.SIMPLE_REPLY_MAGIC;
    if (last >= 0 && isSimple(parts[last])) {
      // a simple reply is complete in itself
    } else if (last >= 0 && random() < 0.5) {
      parts[last].writeUInt16BE(parts[last].readUInt16BE(4) | C.REPLY_FLAG_DONE, 4);
    } else {
      parts.push(chunkHeader(C.REPLY_FLAG_DONE, C.REPLY_TYPE_NONE, cookie, 0));
    }
    queues.push(parts);
    expected.push(outcome);
  });
  // Interleave the replies, each in its own order.
  const stream: Buffer[] = [];
  const live = queues.filter((q) => q.length > 0);
  while (live.length > 0) {
    const k = pick(live.length);
    stream.push(live[k].shift() as Buffer);
    if (live[k].length === 0) live.splice(k, 1);
  }
  return { stream: Buffer.concat(stream), expected };
}

/** Parses `stream` cut at `cuts` and returns each request's outcome plus any violation. */
function parse(
  requests: Request[],
  structured: boolean,
  stream: Buffer,
  cuts: number[],
): { outcomes: Array<Outcome | undefined>; violation: string | undefined } {
  const { table, dsts } = setUp(requests);
  const outcomes: Array<Outcome | undefined> = requests.map(() => undefined);
  let violation: string | undefined;
  const parser = new ReplyParser(
    table,
    {
      replyDone: (s) => {
        assert.equal(outcomes[s], undefined, 'one completion per request');
        const errno = table.errno[s];
        const pairs = table.extents[s];
        outcomes[s] = {
          errno,
          message: table.message[s],
          data: errno === 0 && dsts[s] !== null ? (dsts[s] as Buffer).toString('hex') : undefined,
          extents: errno === 0 && pairs !== null ? [...pairs] : undefined,
        };
        table.release(s);
      },
      violation: (reason) => {
        assert.equal(violation, undefined, 'at most one violation');
        violation = reason;
      },
    },
    { structured, contextIds: CONTEXT_IDS },
  );
  let at = 0;
  for (const cut of [...cuts.filter((c) => c > 0 && c < stream.length)].sort((a, b) => a - b)) {
    parser.feed(stream.subarray(at, cut));
    at = cut;
  }
  parser.feed(stream.subarray(at));
  return { outcomes, violation };
}

const requestArb = fc.record({
  kind: fc.constantFrom<Kind>('read', 'read', 'write', 'flush', 'trim', 'status'),
  offset: fc.nat({ max: 1 << 30 }),
  length: fc.integer({ min: 1, max: 2048 }),
  reqOne: fc.boolean(),
});

test('valid reply streams parse to the expected outcome at any chunk boundaries', () => {
  let runs = 0;
  fc.assert(
    fc
      .property(
        fc.array(requestArb, { minLength: 1, maxLength: 24 }),
        fc.boolean(),
        fc.integer(),
        fc.array(fc.nat({ max: 100_000 }), { maxLength: 40 }),
        (requests, structuredWanted, seed, cuts) => {
          runs++;
          // Block status exists only with structured replies.
          const structured = structuredWanted || requests.some((r) => r.kind === 'status');
          const { stream, expected } = build(requests, structured, seed);
          const whole = parse(requests, structured, stream, []);
          assert.equal(whole.violation, undefined, whole.violation);
          assert.deepEqual(whole.outcomes, expected);
          const split = parse(requests, structured, stream, cuts);
          assert.deepEqual(split, whole);
          const bytewise = parse(
            requests,
            structured,
            stream,
            Array.from({ length: Math.min(stream.length, 400) }, (_, i) => i),
          );
          assert.deepEqual(bytewise, whole);
        },
      )
      .beforeEach(() => undefined),
    { interruptAfterTimeLimit: TIME_MS, numRuns: 100_000 },
  );
  assert.ok(runs > 50, `only ${runs} runs`);
});

test('garbage and corrupted streams never throw and never hang', () => {
  let violations = 0;
  let runs = 0;
  fc.assert(
    fc.property(
      fc.array(requestArb, { minLength: 1, maxLength: 8 }),
      fc.boolean(),
      fc.integer(),
      fc.oneof(
        fc
          .uint8Array({ maxLength: 512 })
          .map((bytes) => ({ garbage: Buffer.from(bytes), flips: [] as number[] })),
        fc.array(fc.nat(), { minLength: 1, maxLength: 6 }).map((flips) => ({ garbage: undefined, flips })),
      ),
      fc.array(fc.nat({ max: 4096 }), { maxLength: 20 }),
      (requests, structuredWanted, seed, corruption, cuts) => {
        runs++;
        const structured = structuredWanted || requests.some((r) => r.kind === 'status');
        let stream: Buffer;
        if (corruption.garbage !== undefined) {
          stream = corruption.garbage;
        } else {
          stream = Buffer.from(build(requests, structured, seed).stream);
          for (const flip of corruption.flips) stream[flip % stream.length] ^= 1 + (flip % 255);
        }
        // Never throws, and reaches the same verdict wherever the chunks are cut: the same
        // requests complete with the same outcomes, and the same violation (if any) is reported.
        const result = parse(requests, structured, stream, []);
        assert.deepEqual(parse(requests, structured, stream, cuts), result);
        const bytewise = Array.from({ length: Math.min(stream.length, 400) }, (_, i) => i);
        assert.deepEqual(parse(requests, structured, stream, bytewise), result);
        if (result.violation !== undefined) violations++;
      },
    ),
    { interruptAfterTimeLimit: TIME_MS, numRuns: 100_000 },
  );
  assert.ok(runs > 50 && violations > 0, `${runs} runs, ${violations} violations`);
});

test('over a socket, garbage replies fail every request with NBD_PROTOCOL (or CONNECTION_CLOSED)', async () => {
  // A fixed number of runs, not a time budget: under load a 2 s budget fitted only 4 runs.
  const RUNS = 25;
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 256 }), async (bytes) => {
      runs++;
      const fake = await FakeServer.start({
        onRequest: (_req, socket) => {
          socket.write(bytes);
          socket.end();
        },
      });
      try {
        const client = await NbdClient.connect({ port: fake.port, requestTimeoutMs: 2_000 });
        const results = await Promise.allSettled([client.read(0, 8), client.write(0, Buffer.alloc(8))]);
        for (const result of results) {
          assert.equal(result.status, 'rejected');
          const reason = (result as PromiseRejectedResult).reason;
          assert.ok(reason instanceof MemfabricError, String(reason));
          assert.ok(
            reason.code === ErrorCodes.NBD_PROTOCOL || reason.code === ErrorCodes.CONNECTION_CLOSED,
            reason.code,
          );
        }
      } finally {
        await fake.stop();
      }
    }),
    { numRuns: RUNS },
  );
  assert.equal(runs, RUNS);
});
