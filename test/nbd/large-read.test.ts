/**
 * READs longer than READ_PIECE_BYTES are answered piece by piece (transmission.ts): the bytes
 * must be exactly the export's, structured replies must be one OFFSET_DATA chunk per piece
 * with DONE on the last, replies completed meanwhile must not split a simple reply, an export
 * failure mid-way must end the reply cleanly (an error chunk, or a hard disconnect for a simple
 * reply already half sent), and a client that does not read must make the server hold about
 * two pieces, not the whole READ.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemfabricError, ErrorCodes } from '../../src/errors.js';
import * as C from './nbd-numbers.js';
import { startServer } from './helpers.js';
import { MemoryDirectory, MemoryExport, testDirectory } from './memory-export.js';
import { encodeRequest, RawClient } from './raw-client.js';
import { waitFor } from '../interop/appliance-process.js';

const MiB = 1024 * 1024;
const LENGTH = 32 * MiB;

function patterned(dir: MemoryDirectory): MemoryExport {
  const exp = dir.exports.get('') as MemoryExport;
  const view = Buffer.from(exp.data.buffer, exp.data.byteOffset, exp.data.byteLength);
  for (let i = 0; i + 4 <= LENGTH + MiB; i += 4) view.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
  exp.allocated.fill(1);
  return exp;
}

/** An export that fails every read touching [failFrom, ...). */
class FailingExport extends MemoryExport {
  constructor(private readonly failFrom: number) {
    super(64 * MiB);
  }
  override read(offset: number, dst: Uint8Array): void {
    if (offset + dst.length > this.failFrom) {
      throw new MemfabricError(ErrorCodes.INTERNAL, 'disk on fire');
    }
    super.read(offset, dst);
  }
}

test('a 32 MiB READ: exact bytes, simple and structured (one chunk per piece, DONE last)', async (t) => {
  const { server, port, dir } = await startServer(testDirectory());
  t.after(() => server.close());
  const exp = patterned(dir);
  const expected = Buffer.from(exp.data.subarray(MiB, MiB + LENGTH));

  const { client: simple } = await RawClient.open(port, '', { structured: false });
  t.after(() => simple.destroy());
  assert.ok((await simple.pread(MiB, LENGTH, false)).equals(expected));

  const { client: structured } = await RawClient.open(port);
  t.after(() => structured.destroy());
  structured.request(C.CMD_READ, MiB, LENGTH, { cookie: 9n });
  const pieces: Buffer[] = [];
  let next = MiB;
  for (;;) {
    const chunk = await structured.readReply();
    assert.equal(chunk.cookie, 9n);
    assert.equal(chunk.type, C.REPLY_TYPE_OFFSET_DATA);
    assert.equal(Number(chunk.data.readBigUInt64BE(0)), next);
    pieces.push(chunk.data.subarray(8));
    next += chunk.data.length - 8;
    if ((chunk.flags & C.REPLY_FLAG_DONE) !== 0) break;
  }
  // Each chunk, header included, fills one piece.
  assert.equal(pieces.length, Math.ceil(LENGTH / (C.READ_PIECE_BYTES - 28)));
  assert.ok(Buffer.concat(pieces).equals(expected));
  assert.equal(server.stats().bytesRead, 2 * LENGTH);
});

test('replies completed during a large simple READ wait until it is whole', async (t) => {
  const { server, port, dir } = await startServer(testDirectory());
  t.after(() => server.close());
  const exp = patterned(dir);
  const { client: c } = await RawClient.open(port, '', { structured: false });
  t.after(() => c.destroy());
  const small = Buffer.alloc(4096, 0x77);
  // One write: a FUA WRITE (answered after an asynchronous flush), the large READ, a small READ.
  c.write(
    Buffer.concat([
      encodeRequest(C.CMD_WRITE, 48 * MiB, small.length, C.CMD_FLAG_FUA, 1n, small),
      encodeRequest(C.CMD_READ, 0, LENGTH, 0, 2n),
      encodeRequest(C.CMD_READ, 48 * MiB, small.length, 0, 3n),
    ]),
  );
  const expectedLarge = Buffer.from(exp.data.subarray(0, LENGTH));
  const seen: bigint[] = [];
  for (let i = 0; i < 3; i++) {
    const header = await c.read(C.SIMPLE_REPLY_HEADER_BYTES, 20_000);
    assert.equal(header.readUInt32BE(0), C.SIMPLE_REPLY_MAGIC);
    assert.equal(header.readUInt32BE(4), 0);
    const cookie = header.readBigUInt64BE(8);
    seen.push(cookie);
    if (cookie === 2n) assert.ok((await c.read(LENGTH, 20_000)).equals(expectedLarge));
    if (cookie === 3n) assert.ok((await c.read(small.length)).equals(small));
  }
  assert.deepEqual([...seen].sort(), [1n, 2n, 3n]);
  assert.equal(seen.indexOf(2n) < seen.indexOf(3n), true, 'requests run in order');
});

test('an export failing in the middle of a large READ', async (t) => {
  const dir = new MemoryDirectory();
  dir.add('', new FailingExport(8 * MiB));
  const { server, port } = await startServer(dir);
  t.after(() => server.close());

  // Structured: the pieces before the failure, then an error chunk flagged DONE; the
  // connection goes on.
  const { client: s } = await RawClient.open(port);
  t.after(() => s.destroy());
  s.request(C.CMD_READ, 0, LENGTH, { cookie: 5n });
  let data = 0;
  for (;;) {
    const chunk = await s.readReply();
    if (chunk.type === C.REPLY_TYPE_OFFSET_DATA) {
      assert.equal((chunk.flags & C.REPLY_FLAG_DONE) === 0, true);
      data += chunk.data.length - 8;
      continue;
    }
    assert.equal(chunk.type, C.REPLY_TYPE_ERROR);
    assert.equal(chunk.error, C.EIO);
    assert.equal((chunk.flags & C.REPLY_FLAG_DONE) !== 0, true);
    break;
  }
  const piece = C.READ_PIECE_BYTES - 28; // data in one structured piece
  assert.equal(data, Math.floor((8 * MiB) / piece) * piece);
  assert.deepEqual(await s.pread(0, 4096), Buffer.alloc(4096));

  // Simple: the header has gone with the first piece, so the server hangs up.
  const { client: p } = await RawClient.open(port, '', { structured: false });
  t.after(() => p.destroy());
  p.request(C.CMD_READ, 0, LENGTH, { cookie: 6n });
  assert.equal(await p.waitClosed(20_000), true);
  // And a failure on the first piece is an ordinary error reply.
  const { client: q } = await RawClient.open(port, '', { structured: false });
  t.after(() => q.destroy());
  q.request(C.CMD_READ, 8 * MiB, LENGTH, { cookie: 7n });
  const reply = await q.readReply();
  assert.equal(reply.error, C.EIO);
  assert.equal(server.stats().errors, 3);
});

test('a client that asks for 32 MiB READs and reads nothing makes the server hold ~2 pieces', async (t) => {
  const { server, port } = await startServer(testDirectory());
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  c.socket.pause();
  const frames: Buffer[] = [];
  for (let i = 0; i < 8; i++) frames.push(encodeRequest(C.CMD_READ, 0, LENGTH, 0, BigInt(i)));
  c.write(Buffer.concat(frames));
  await waitFor('a piece to be queued', () => server.stats().bufferBytesUsed >= C.READ_PIECE_BYTES);
  for (let i = 0; i < 50; i++) {
    const used = server.stats().bufferBytesUsed;
    assert.ok(used < 2 * C.READ_PIECE_BYTES + 64, `${used} bytes held`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  c.socket.resume();
  for (let i = 0; i < 8; i++) {
    for (;;) {
      const chunk = await c.readReply();
      if ((chunk.flags & C.REPLY_FLAG_DONE) !== 0) break;
    }
  }
});
