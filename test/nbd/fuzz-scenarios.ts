/**
 * fast-check generators of hostile NBD traffic, and the checks that go with them, for fuzzing
 * a server over a real socket. Export names are parameters, so the same generators serve the
 * bare server's test exports (test/nbd/fuzz.test.ts) and the appliance's regions
 * (test/interop/fuzz.test.ts).
 *
 * A scenario is one connection: either a handshake of option frames (known or random options,
 * well-formed or garbage data, declared lengths that lie, an occasional bad magic), or a proper
 * handshake into an export followed by request frames (mostly the right magic so validation is
 * exercised; random flags, commands, huge and out-of-range offsets and lengths, WRITE payloads
 * cut short), trailing garbage, arbitrary chunk splits, and possibly an abrupt disconnect.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as C from '../../src/nbd/protocol/constants.js';
import { infoData, metaContextData, RawClient } from './raw-client.js';

/** How long a scenario waits for the server's answers before hanging up. */
export const DRAIN_MS = 25;
/** Bytes of WRITE payload a scenario actually sends at most (a longer declared length is a truncated frame). */
const PAYLOAD_SENT_BYTES_MAX = 65_536;

export const u32 = fc.oneof(
  fc.constantFrom(
    0,
    1,
    511,
    4096,
    65_536,
    C.PAYLOAD_BYTES_MAX,
    C.PAYLOAD_BYTES_MAX + 1,
    2 ** 31,
    2 ** 32 - 1,
  ),
  fc.nat({ max: 2 ** 32 - 1 }),
);

export const u64 = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    4096n,
    1000000n,
    4n * 1024n * 1024n - 4096n,
    4n * 1024n * 1024n,
    64n * 1024n * 1024n,
    2n ** 53n,
    2n ** 63n,
    2n ** 64n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 8n * 1024n * 1024n }),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
);

/** Export names: the given ones, unknown ones, and random strings (never `forbidden`). */
export function exportNameArb(names: string[], forbidden: string[]): fc.Arbitrary<string> {
  return fc
    .oneof(fc.constantFrom(...names, 'nope'), fc.string({ maxLength: 20 }))
    .filter((n) => !forbidden.includes(n));
}

/** One option frame; its declared length may lie and its magic may be wrong. */
export function optionFrameArb(names: fc.Arbitrary<string>): fc.Arbitrary<Buffer> {
  return fc
    .record({
      option: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.nat({ max: 2 ** 32 - 1 })),
      data: fc.oneof(
        names.chain((name) =>
          fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }).map((infos) => infoData(name, infos)),
        ),
        names.chain((name) =>
          fc
            .array(fc.oneof(fc.constantFrom('base:', 'base:allocation', 'qemu:x', 'nocolon'), fc.string()), {
              maxLength: 4,
            })
            .map((q) => metaContextData(name, q)),
        ),
        fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
      ),
      lie: fc.option(u32, { freq: 5 }),
      badMagic: fc.integer({ min: 0, max: 19 }).map((n) => n === 0),
    })
    .map(({ option, data, lie, badMagic }) => {
      const header = Buffer.alloc(C.OPTION_HEADER_BYTES);
      header.writeUInt32BE(badMagic ? 0x12345678 : C.IHAVEOPT_HI, 0);
      header.writeUInt32BE(C.IHAVEOPT_LO, 4);
      header.writeUInt32BE(option >>> 0, 8);
      header.writeUInt32BE((lie ?? data.length) >>> 0, 12);
      return Buffer.concat([header, data]);
    });
}

export interface RequestFrame {
  bytes: Buffer;
  cookie: bigint;
}

/** One request frame, mostly with the right magic; WRITE payloads may be cut short or absent. */
export const requestFrameArb: fc.Arbitrary<RequestFrame> = fc
  .record({
    magic: fc.oneof(
      { weight: 9, arbitrary: fc.constant(C.REQUEST_MAGIC) },
      { weight: 1, arbitrary: fc.nat({ max: 2 ** 32 - 1 }) },
    ),
    flags: fc.oneof(fc.constantFrom(0, 1, 2, 4, 8, 16, 3, 0x20), fc.integer({ min: 0, max: 0xffff })),
    type: fc.oneof(
      { weight: 6, arbitrary: fc.integer({ min: 0, max: 7 }) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    offset: u64,
    length: fc.oneof(fc.integer({ min: 0, max: 70_000 }), u32),
    payload: fc.constantFrom('exact', 'short', 'none'),
  })
  .map((r) => {
    const header = Buffer.alloc(C.REQUEST_HEADER_BYTES);
    header.writeUInt32BE(r.magic >>> 0, 0);
    header.writeUInt16BE(r.flags, 4);
    header.writeUInt16BE(r.type, 6);
    header.writeBigUInt64BE(r.cookie, 8);
    header.writeBigUInt64BE(r.offset, 16);
    header.writeUInt32BE(r.length >>> 0, 24);
    let payload = Buffer.alloc(0);
    if (r.type === C.CMD_WRITE && r.payload !== 'none') {
      const sent = Math.min(
        r.length,
        PAYLOAD_SENT_BYTES_MAX,
        r.payload === 'short' ? Math.floor(r.length / 2) : r.length,
      );
      payload = Buffer.alloc(sent, 0xee);
    }
    return { bytes: Buffer.concat([header, payload]), cookie: r.cookie };
  });

export interface Scenario {
  phase: 'handshake' | 'transmission';
  clientFlags: number;
  options: Buffer[];
  exportName: string;
  structured: boolean;
  requests: RequestFrame[];
  garbage: Uint8Array | null;
  splits: number[];
  abrupt: boolean;
}

/**
 * Scenarios against a server whose exports include `transmissionExports` (entered with a proper
 * handshake before the request frames); `forbidden` names are never used (a good client's).
 */
export function scenarioArb(transmissionExports: string[], forbidden: string[]): fc.Arbitrary<Scenario> {
  const names = exportNameArb(transmissionExports, forbidden);
  return fc.record({
    phase: fc.constantFrom('handshake' as const, 'transmission' as const),
    clientFlags: fc.oneof(
      { weight: 8, arbitrary: fc.constant(C.CLIENT_FLAGS_KNOWN) },
      { weight: 1, arbitrary: fc.nat({ max: 2 ** 32 - 1 }) },
    ),
    options: fc.array(optionFrameArb(names), { maxLength: 6 }),
    exportName: fc.constantFrom(...transmissionExports),
    structured: fc.boolean(),
    requests: fc.array(requestFrameArb, { minLength: 1, maxLength: 12 }),
    garbage: fc.option(fc.uint8Array({ minLength: 1, maxLength: 100 }), { freq: 6 }),
    splits: fc.array(fc.integer({ min: 1, max: 200 }), { maxLength: 6 }),
    abrupt: fc.boolean(),
  });
}

/** Parses a structured-mode reply stream; returns what is wrong with it, or undefined. */
export function checkReplies(stream: Buffer, cookies: Set<bigint>): string | undefined {
  let at = 0;
  while (at < stream.length) {
    if (stream.length - at < 4) return undefined; // cut short by our disconnect
    const magic = stream.readUInt32BE(at);
    let size: number;
    if (magic === C.SIMPLE_REPLY_MAGIC) size = C.SIMPLE_REPLY_HEADER_BYTES;
    else if (magic === C.STRUCTURED_REPLY_MAGIC) {
      if (stream.length - at < C.STRUCTURED_REPLY_HEADER_BYTES) return undefined;
      size = C.STRUCTURED_REPLY_HEADER_BYTES + stream.readUInt32BE(at + 16);
      if (size > C.PAYLOAD_BYTES_MAX + 64) return `reply chunk of ${size} bytes`;
    } else return `bad reply magic 0x${magic.toString(16)} at ${at}`;
    if (stream.length - at < 16) return undefined;
    const cookie = stream.readBigUInt64BE(at + 8);
    if (!cookies.has(cookie)) return `reply for a cookie never sent: ${cookie}`;
    at += size;
  }
  return undefined;
}

function sendSplit(c: RawClient, bytes: Buffer, splits: number[]): void {
  let at = 0;
  for (const s of splits) {
    if (at >= bytes.length) break;
    c.write(bytes.subarray(at, at + s));
    at += s;
  }
  if (at < bytes.length) c.write(bytes.subarray(at));
}

/** Reads whatever arrives until the server closes or the wait ends. */
async function drain(c: RawClient, ms: number): Promise<Buffer> {
  await c.waitClosed(ms);
  return c.read(c.available(), 0).catch(() => Buffer.alloc(0));
}

async function optionReplies(c: RawClient): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await c.readOptionReply();
    if (r.type === C.REP_ACK || r.type >= 0x80000000) return;
  }
}

/**
 * Plays one scenario against the server on `port`. Asserts that the server greets (it keeps
 * accepting) and, in structured mode, that every byte it answers parses as replies to cookies
 * the scenario sent.
 */
export async function playScenario(port: number, s: Scenario, drainMs = DRAIN_MS): Promise<void> {
  const c = await RawClient.connect(port);
  try {
    const greeting = await c.read(C.SERVER_GREETING_BYTES);
    assert.equal(greeting.toString('latin1', 0, 8), 'NBDMAGIC', 'the server still greets');
    const flags = Buffer.alloc(C.CLIENT_FLAGS_BYTES);
    if (s.phase === 'handshake') {
      flags.writeUInt32BE(s.clientFlags >>> 0);
      sendSplit(
        c,
        Buffer.concat([flags, ...s.options, ...(s.garbage ? [Buffer.from(s.garbage)] : [])]),
        s.splits,
      );
      if (!s.abrupt) await drain(c, drainMs);
      return;
    }
    flags.writeUInt32BE(C.CLIENT_FLAGS_KNOWN);
    c.write(flags);
    if (s.structured) {
      c.sendOption(C.OPT_STRUCTURED_REPLY);
      await optionReplies(c);
      c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData(s.exportName, [C.META_CONTEXT_BASE_ALLOCATION]));
      await optionReplies(c);
    }
    await c.go(s.exportName);
    const cookies = new Set(s.requests.map((r) => r.cookie));
    sendSplit(
      c,
      Buffer.concat([...s.requests.map((r) => r.bytes), ...(s.garbage ? [Buffer.from(s.garbage)] : [])]),
      s.splits,
    );
    if (s.abrupt) return;
    const replies = await drain(c, drainMs);
    if (s.structured) {
      const problem = checkReplies(replies, cookies);
      assert.equal(problem, undefined, problem);
    }
  } finally {
    c.destroy();
  }
}
