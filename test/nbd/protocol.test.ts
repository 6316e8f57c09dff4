/**
 * The protocol's codecs (src/nbd/protocol/): for every message the server and the client
 * exchange, what one side encodes the other decodes to the same values, at any offset in a
 * larger buffer where the writer takes one. Decoders of what a client sends refuse every
 * truncation of a valid message (the server must never read past option data), and decoders
 * with a magic refuse a wrong one. The unchecked loads of the per-request decoders read what
 * Buffer's checked reads do.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as C from '../../src/nbd/protocol/constants.js';
import {
  decodeClientFlags,
  decodeExportNameReply,
  decodeGreetingMagic,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeOption,
  encodeOptionReply,
  exportNameReplyBytes,
  GREETING_MAGIC_BYTES,
  isOptionReplyError,
} from '../../src/nbd/protocol/handshake.js';
import {
  decodeInfoBlockSize,
  decodeInfoExport,
  decodeInfoRequest,
  decodeInfoString,
  decodeInfoType,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeServerReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeServerReply,
  isRefusal,
} from '../../src/nbd/protocol/option-data.js';
import {
  decodeSimpleReplyHeader,
  decodeStructuredReplyHeader,
  encodeErrorChunk,
  ERROR_FIELDS_BYTES,
  OFFSET_DATA_HEADER_BYTES,
  writeOffsetDataHeader,
  writeSimpleReplyHeader,
  writeStructuredReplyHeader,
  type SimpleReplyHeader,
  type StructuredReplyHeader,
} from '../../src/nbd/protocol/reply.js';
import {
  decodeRequestHeader,
  writeRequestHeader,
  type RequestHeader,
} from '../../src/nbd/protocol/request.js';
import { loadU16, loadU32, loadU64, readU64, writeU64 } from '../../src/nbd/protocol/integers.js';

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u53 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
/** Strings the spec allows a client to send: no NUL, at most NAME_BYTES_MAX bytes. */
const name = fc
  .string({ unit: 'grapheme', maxLength: 64 })
  .filter((s) => !s.includes('\0') && Buffer.byteLength(s) <= C.NAME_BYTES_MAX);
const query = fc.tuple(name, name).map(([ns, leaf]) => `${ns.replace(/:/g, '')}:${leaf}`);
const at = fc.integer({ min: 0, max: 64 });

test('integers: every integer below 2^53 survives a write and a read at any offset', () => {
  fc.assert(
    fc.property(u53, at, (value, offset) => {
      const buf = Buffer.alloc(offset + 8);
      writeU64(buf, offset, value);
      assert.equal(readU64(buf, offset), value);
      assert.equal(loadU64(buf, offset), value);
    }),
  );
});

test('integers: the unchecked loads read what Buffer reads, for any bytes at any offset', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 8, maxLength: 72 }), at, (bytes, where) => {
      const buf = Buffer.from(bytes);
      const offset = where % (buf.length - 7);
      assert.equal(loadU16(buf, offset), buf.readUInt16BE(offset));
      assert.equal(loadU32(buf, offset), buf.readUInt32BE(offset));
      assert.equal(loadU64(buf, offset), readU64(buf, offset));
    }),
  );
});

test('handshake frames: greeting, client flags, option header, option reply header, EXPORT_NAME reply', () => {
  fc.assert(
    fc.property(u16, u32, u32, fc.uint8Array({ maxLength: 64 }), u32, (flags, option, type, data, word) => {
      const greeting = encodeGreeting(flags);
      assert.equal(greeting.length, C.SERVER_GREETING_BYTES);
      assert.equal(decodeGreetingMagic(greeting.subarray(0, GREETING_MAGIC_BYTES)), 'newstyle');
      assert.equal(greeting.readUInt16BE(GREETING_MAGIC_BYTES), flags);

      assert.equal(decodeClientFlags(encodeClientFlags(word)), word);

      const opt = encodeOption(option, Buffer.from(data));
      assert.deepEqual(decodeOptionHeader(opt.subarray(0, C.OPTION_HEADER_BYTES)), {
        option,
        length: data.length,
      });
      assert.deepEqual(opt.subarray(C.OPTION_HEADER_BYTES), Buffer.from(data));

      const reply = encodeOptionReply(option, type, Buffer.from(data));
      assert.deepEqual(decodeOptionReplyHeader(reply.subarray(0, C.OPTION_REPLY_HEADER_BYTES)), {
        option,
        type,
        length: data.length,
      });
      assert.deepEqual(reply.subarray(C.OPTION_REPLY_HEADER_BYTES), Buffer.from(data));
      assert.equal(isOptionReplyError(type), (type & 0x80000000) !== 0);
    }),
  );
  fc.assert(
    fc.property(u53, u16, fc.boolean(), (size, flags, noZeroes) => {
      const buf = encodeExportNameReply(size, flags, noZeroes);
      assert.equal(buf.length, exportNameReplyBytes(noZeroes));
      assert.deepEqual(decodeExportNameReply(buf), { size, transmissionFlags: flags });
      assert.ok(buf.subarray(C.EXPORT_NAME_REPLY_BYTES).every((b) => b === 0));
    }),
  );
});

test('handshake frames: a wrong magic is told apart from NBDMAGIC, IHAVEOPT and the option reply magic', () => {
  const greeting = encodeGreeting(C.FLAG_FIXED_NEWSTYLE).subarray(0, GREETING_MAGIC_BYTES);
  const notNbd = Buffer.from(greeting);
  notNbd[0] ^= 1;
  assert.equal(decodeGreetingMagic(notNbd), 'not-nbd');
  const bad = Buffer.from(greeting);
  bad[12] ^= 1;
  assert.equal(decodeGreetingMagic(bad), 'bad');
  const oldstyle = Buffer.from(greeting);
  // The spec's cliserv_magic, written from its 64-bit value rather than from our halves.
  oldstyle.writeBigUInt64BE(0x00420281861253n, 8);
  assert.equal(decodeGreetingMagic(oldstyle), 'oldstyle');
  for (let byte = 0; byte < 8; byte++) {
    const option = encodeOption(C.OPT_GO);
    option[byte] ^= 0x80;
    assert.equal(decodeOptionHeader(option), undefined);
    const reply = encodeOptionReply(C.OPT_GO, C.REP_ACK);
    reply[byte] ^= 0x80;
    assert.equal(decodeOptionReplyHeader(reply), undefined);
  }
});

test('option data: INFO/GO and meta context requests round-trip, and every truncation is refused', () => {
  fc.assert(
    fc.property(name, fc.array(u16, { maxLength: 8 }), (exportName, infos) => {
      const data = encodeInfoRequest(exportName, infos);
      assert.deepEqual(decodeInfoRequest(data), { name: exportName, infos });
      for (let length = 0; length < data.length; length++) {
        const truncated = decodeInfoRequest(data.subarray(0, length));
        assert.ok(isRefusal(truncated) && truncated.refusal === C.REP_ERR_INVALID, `prefix of ${length}`);
      }
    }),
  );
  fc.assert(
    fc.property(name, fc.array(query, { maxLength: 6 }), (exportName, queries) => {
      const data = encodeMetaContextRequest(exportName, queries);
      assert.deepEqual(decodeMetaContextRequest(data, 6), { name: exportName, queries });
      for (let length = 0; length < data.length; length++) {
        const truncated = decodeMetaContextRequest(data.subarray(0, length), 6);
        assert.ok(isRefusal(truncated) && truncated.refusal === C.REP_ERR_INVALID, `prefix of ${length}`);
      }
      const tooMany = decodeMetaContextRequest(
        encodeMetaContextRequest(exportName, [...queries, 'a:b']),
        queries.length,
      );
      assert.ok(isRefusal(tooMany) && tooMany.refusal === C.REP_ERR_TOO_BIG);
    }),
  );
});

test('option data: the spec string rules and query syntax are enforced', () => {
  const withNul = decodeInfoRequest(encodeInfoRequest('a\0b', []));
  assert.ok(isRefusal(withNul) && withNul.message === 'export name is not a valid string');
  const long = decodeInfoRequest(encodeInfoRequest('x'.repeat(C.NAME_BYTES_MAX + 1), []));
  assert.ok(isRefusal(long));
  assert.deepEqual(decodeInfoRequest(encodeInfoRequest('x'.repeat(C.NAME_BYTES_MAX), [])), {
    name: 'x'.repeat(C.NAME_BYTES_MAX),
    infos: [],
  });
  const noColon = decodeMetaContextRequest(encodeMetaContextRequest('', ['base']), 8);
  assert.ok(isRefusal(noColon) && noColon.refusal === C.REP_ERR_INVALID);
  const trailing = Buffer.concat([encodeMetaContextRequest('', ['base:allocation']), Buffer.of(0)]);
  const extra = decodeMetaContextRequest(trailing, 8);
  assert.ok(isRefusal(extra) && extra.message === 'trailing bytes after the last query');
});

test('option replies: REP_SERVER, REP_META_CONTEXT and every NBD_INFO payload round-trip', () => {
  fc.assert(
    fc.property(name, name, u32, u53, u16, u32, u32, u32, (a, b, id, size, flags, min, pref, max) => {
      assert.deepEqual(decodeServerReply(encodeServerReply(a, b)), { name: a, description: b });
      if (a !== '') assert.deepEqual(decodeMetaContextReply(encodeMetaContextReply(id, a)), { id, name: a });

      const exportInfo = encodeInfoExport(size, flags);
      assert.equal(decodeInfoType(exportInfo), C.INFO_EXPORT);
      assert.deepEqual(decodeInfoExport(exportInfo), { size, transmissionFlags: flags });
      assert.equal(decodeInfoExport(exportInfo.subarray(0, exportInfo.length - 1)), undefined);

      for (const type of [C.INFO_NAME, C.INFO_DESCRIPTION]) {
        const info = encodeInfoString(type, a);
        assert.equal(decodeInfoType(info), type);
        assert.equal(decodeInfoString(info), a);
      }

      const blockSize = encodeInfoBlockSize(min, pref, max);
      assert.equal(decodeInfoType(blockSize), C.INFO_BLOCK_SIZE);
      assert.deepEqual(decodeInfoBlockSize(blockSize), { minimum: min, preferred: pref, maximum: max });
      assert.equal(decodeInfoBlockSize(Buffer.concat([blockSize, Buffer.of(0)])), undefined);
    }),
  );
  assert.equal(decodeServerReply(Buffer.from([0, 0, 0, 5, 0x61])), undefined);
  assert.equal(decodeInfoType(Buffer.of(0)), undefined);
});

test('request header: what the client writes the server decodes, at any offset; a wrong magic changes nothing', () => {
  fc.assert(
    fc.property(
      u16,
      u16,
      u32,
      u32,
      u53,
      u32,
      at,
      (flags, type, cookieHi, cookieLo, offset, length, where) => {
        const buf = Buffer.alloc(where + C.REQUEST_HEADER_BYTES);
        writeRequestHeader(buf, where, flags, type, cookieHi, cookieLo, offset, length);
        const req: RequestHeader = { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
        assert.ok(decodeRequestHeader(buf, where, req));
        assert.deepEqual(req, { flags, type, cookieHi, cookieLo, offset, length });
        buf[where] ^= 1;
        const before = { ...req };
        assert.equal(decodeRequestHeader(buf, where, req), false);
        assert.deepEqual(req, before);
      },
    ),
  );
});

test('reply headers: simple replies, structured chunks, OFFSET_DATA and error chunks decode as written', () => {
  fc.assert(
    fc.property(
      u32,
      u16,
      u16,
      u32,
      u32,
      u32,
      u53,
      at,
      fc.string({ maxLength: 40 }),
      (errno, flags, type, cookieHi, cookieLo, length, offset, where, message) => {
        const simple: SimpleReplyHeader = { errno: 0, cookieHi: 0, cookieLo: 0 };
        const buf = Buffer.alloc(where + OFFSET_DATA_HEADER_BYTES);
        writeSimpleReplyHeader(buf, where, errno, cookieHi, cookieLo);
        assert.equal(buf.readUInt32BE(where), C.SIMPLE_REPLY_MAGIC);
        decodeSimpleReplyHeader(buf, where, simple);
        assert.deepEqual(simple, { errno, cookieHi, cookieLo });

        const chunk: StructuredReplyHeader = { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, length: 0 };
        writeStructuredReplyHeader(buf, where, flags, type, cookieHi, cookieLo, length);
        assert.equal(buf.readUInt32BE(where), C.STRUCTURED_REPLY_MAGIC);
        decodeStructuredReplyHeader(buf, where, chunk);
        assert.deepEqual(chunk, { flags, type, cookieHi, cookieLo, length });

        const dataLength = length % (C.PAYLOAD_BYTES_MAX + 1);
        writeOffsetDataHeader(buf, where, flags, cookieHi, cookieLo, offset, dataLength);
        decodeStructuredReplyHeader(buf, where, chunk);
        assert.deepEqual(chunk, {
          flags,
          type: C.REPLY_TYPE_OFFSET_DATA,
          cookieHi,
          cookieLo,
          length: 8 + dataLength,
        });
        assert.equal(readU64(buf, where + C.STRUCTURED_REPLY_HEADER_BYTES), offset);

        const error = encodeErrorChunk(errno, cookieHi, cookieLo, message);
        decodeStructuredReplyHeader(error, 0, chunk);
        const text = Buffer.from(message, 'utf8');
        assert.deepEqual(chunk, {
          flags: C.REPLY_FLAG_DONE,
          type: C.REPLY_TYPE_ERROR,
          cookieHi,
          cookieLo,
          length: ERROR_FIELDS_BYTES + text.length,
        });
        const payload = error.subarray(C.STRUCTURED_REPLY_HEADER_BYTES);
        assert.equal(payload.readUInt32BE(0), errno);
        assert.equal(payload.readUInt16BE(4), text.length);
        assert.equal(payload.toString('utf8', ERROR_FIELDS_BYTES), message);
      },
    ),
  );
});
