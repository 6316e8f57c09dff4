/**
 * validateRequest and rejectionErrno, the pure checks every request passes before an export sees
 * it, at their boundaries: the last byte of the export and one past it, the largest payload and
 * one more, each flag each command accepts or refuses, and which check wins for a request wrong
 * in two ways (the order docs/nbd.md gives). The socket tests (transmission.test.ts) show the
 * same verdicts reach the client; these pin each comparison.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as C from '../../src/nbd/protocol/constants.js';
import type { RequestHeader } from '../../src/nbd/server/request-parser.js';
import {
  REJECT_DF_NOT_NEGOTIATED,
  REJECT_FLAGS,
  REJECT_NO_META_CONTEXT,
  REJECT_NOT_ZERO,
  REJECT_OUT_OF_RANGE,
  REJECT_READ_ONLY,
  REJECT_TOO_LARGE,
  REJECT_UNKNOWN_COMMAND,
  REJECT_ZERO_LENGTH,
  VALID,
  rejectionErrno,
  validateRequest,
  type ValidationContext,
} from '../../src/nbd/server/validate.js';

const SIZE = 1 << 20;
const CTX: ValidationContext = { size: SIZE, readOnly: false, structuredReplies: true, baseAllocation: true };

function req(type: number, offset: number, length: number, flags = 0): RequestHeader {
  return { type, offset, length, flags, cookieHi: 0, cookieLo: 1 };
}

function verdict(r: RequestHeader, ctx: Partial<ValidationContext> = {}): number {
  return validateRequest(r, { ...CTX, ...ctx });
}

const RANGED = [C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_CACHE, C.CMD_WRITE_ZEROES, C.CMD_BLOCK_STATUS];

test('the range check: the last byte is in, one past the end is out, for every ranged command', () => {
  for (const type of RANGED) {
    assert.equal(verdict(req(type, 0, 1)), VALID, `${type} first byte`);
    assert.equal(verdict(req(type, SIZE - 1, 1)), VALID, `${type} last byte`);
    assert.equal(verdict(req(type, 0, SIZE)), VALID, `${type} the whole export`);
    assert.equal(verdict(req(type, SIZE - 1, 2)), REJECT_OUT_OF_RANGE, `${type} one byte past`);
    assert.equal(verdict(req(type, SIZE, 1)), REJECT_OUT_OF_RANGE, `${type} at the end`);
    assert.equal(verdict(req(type, SIZE + 1, 1)), REJECT_OUT_OF_RANGE, `${type} beyond the end`);
    assert.equal(verdict(req(type, 2 ** 63, 1)), REJECT_OUT_OF_RANGE, `${type} a huge offset`);
    assert.equal(verdict(req(type, 1, SIZE)), REJECT_OUT_OF_RANGE, `${type} a length one too long`);
    assert.equal(verdict(req(type, 0, 0)), REJECT_ZERO_LENGTH, `${type} zero length`);
  }
  // An empty export holds nothing: even offset 0 is out of range.
  assert.equal(verdict(req(C.CMD_TRIM, 0, 1), { size: 0 }), REJECT_OUT_OF_RANGE);
});

test('payload size: READ and WRITE up to PAYLOAD_BYTES_MAX, not one byte more; others are not bounded', () => {
  const huge = { size: 2 ** 40 };
  for (const type of [C.CMD_READ, C.CMD_WRITE]) {
    assert.equal(verdict(req(type, 0, C.PAYLOAD_BYTES_MAX), huge), VALID);
    assert.equal(verdict(req(type, 0, C.PAYLOAD_BYTES_MAX + 1), huge), REJECT_TOO_LARGE);
  }
  for (const type of [C.CMD_TRIM, C.CMD_WRITE_ZEROES, C.CMD_CACHE, C.CMD_BLOCK_STATUS]) {
    assert.equal(verdict(req(type, 0, C.PAYLOAD_BYTES_MAX + 1), huge), VALID, `${type}`);
  }
});

test('flags: each command accepts exactly its own, and DF needs structured replies', () => {
  for (let type = 0; type < C.CMD_COUNT; type++) {
    const r = (flags: number) => req(type, 0, type === C.CMD_FLUSH || type === C.CMD_DISC ? 0 : 512, flags);
    for (let bit = 0; bit < 16; bit++) {
      const flag = 1 << bit;
      const allowed = (C.CMD_FLAGS_ALLOWED[type]! & flag) !== 0;
      const got = verdict(r(flag));
      if (allowed) assert.notEqual(got, REJECT_FLAGS, `command ${type} accepts flag ${flag}`);
      else assert.equal(got, REJECT_FLAGS, `command ${type} refuses flag ${flag}`);
    }
  }
  assert.equal(verdict(req(C.CMD_READ, 0, 512, C.CMD_FLAG_DF)), VALID);
  assert.equal(
    verdict(req(C.CMD_READ, 0, 512, C.CMD_FLAG_DF), { structuredReplies: false }),
    REJECT_DF_NOT_NEGOTIATED,
  );
  assert.equal(verdict(req(C.CMD_READ, 0, 512, C.CMD_FLAG_FUA), { structuredReplies: false }), VALID);
  assert.equal(verdict(req(C.CMD_COUNT, 0, 512)), REJECT_UNKNOWN_COMMAND);
  assert.equal(verdict(req(0xffff, 0, 512)), REJECT_UNKNOWN_COMMAND);
});

test('FLUSH carries no range: zero offset and length only, whatever the size', () => {
  assert.equal(verdict(req(C.CMD_FLUSH, 0, 0)), VALID);
  assert.equal(verdict(req(C.CMD_FLUSH, 0, 0), { readOnly: true }), VALID);
  assert.equal(verdict(req(C.CMD_FLUSH, 1, 0)), REJECT_NOT_ZERO);
  assert.equal(verdict(req(C.CMD_FLUSH, 0, 1)), REJECT_NOT_ZERO);
  assert.equal(verdict(req(C.CMD_FLUSH, SIZE * 4, 0)), REJECT_NOT_ZERO);
});

test('read-only exports refuse WRITE, TRIM and WRITE_ZEROES, and serve the rest', () => {
  const ro = { readOnly: true };
  for (const type of [C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES]) {
    assert.equal(verdict(req(type, 0, 512), ro), REJECT_READ_ONLY, `${type}`);
  }
  for (const type of [C.CMD_READ, C.CMD_CACHE, C.CMD_BLOCK_STATUS]) {
    assert.equal(verdict(req(type, 0, 512), ro), VALID, `${type}`);
  }
  assert.equal(verdict(req(C.CMD_DISC, 0, 0), ro), REJECT_ZERO_LENGTH, 'DISC never reaches validation');
});

test('BLOCK_STATUS needs base:allocation; nothing else does', () => {
  assert.equal(verdict(req(C.CMD_BLOCK_STATUS, 0, 512), { baseAllocation: false }), REJECT_NO_META_CONTEXT);
  for (const type of [C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_CACHE, C.CMD_WRITE_ZEROES]) {
    assert.equal(verdict(req(type, 0, 512), { baseAllocation: false }), VALID, `${type}`);
  }
});

test('a request wrong in two ways gets the first check in the documented order', () => {
  const ro = { readOnly: true };
  // unknown command before flags
  assert.equal(verdict(req(C.CMD_COUNT + 3, 0, 512, 0x8000)), REJECT_UNKNOWN_COMMAND);
  // flags before DF negotiation, before FLUSH fields, before read-only
  assert.equal(verdict(req(C.CMD_WRITE, 0, 512, C.CMD_FLAG_DF), ro), REJECT_FLAGS);
  assert.equal(verdict(req(C.CMD_FLUSH, 1, 1, 0x8000)), REJECT_FLAGS);
  // DF without structured replies before the range
  assert.equal(
    verdict(req(C.CMD_READ, SIZE, 512, C.CMD_FLAG_DF), { structuredReplies: false }),
    REJECT_DF_NOT_NEGOTIATED,
  );
  // read-only before size, meta context, zero length and range
  assert.equal(verdict(req(C.CMD_WRITE, SIZE * 2, C.PAYLOAD_BYTES_MAX + 1), ro), REJECT_READ_ONLY);
  assert.equal(verdict(req(C.CMD_TRIM, 0, 0), ro), REJECT_READ_ONLY);
  // too large before zero length / range
  assert.equal(verdict(req(C.CMD_READ, SIZE * 2, C.PAYLOAD_BYTES_MAX + 1)), REJECT_TOO_LARGE);
  // missing meta context before zero length and range
  assert.equal(
    verdict(req(C.CMD_BLOCK_STATUS, SIZE * 2, 0), { baseAllocation: false }),
    REJECT_NO_META_CONTEXT,
  );
  // zero length before range
  assert.equal(verdict(req(C.CMD_READ, SIZE * 2, 0)), REJECT_ZERO_LENGTH);
});

test('rejectionErrno: the errno the spec asks for each refusal', () => {
  const errno = (reason: number, r: RequestHeader, ctx: Partial<ValidationContext> = {}) =>
    rejectionErrno(reason, r, { ...CTX, ...ctx });
  assert.equal(errno(REJECT_READ_ONLY, req(C.CMD_WRITE, 0, 512)), C.EPERM);
  assert.equal(
    errno(REJECT_TOO_LARGE, req(C.CMD_READ, 0, 512)),
    C.EOVERFLOW,
    'a structured READ may retry smaller',
  );
  assert.equal(errno(REJECT_TOO_LARGE, req(C.CMD_READ, 0, 512), { structuredReplies: false }), C.EINVAL);
  assert.equal(errno(REJECT_TOO_LARGE, req(C.CMD_WRITE, 0, 512)), C.EINVAL);
  assert.equal(errno(REJECT_OUT_OF_RANGE, req(C.CMD_WRITE, 0, 512)), C.ENOSPC);
  assert.equal(errno(REJECT_OUT_OF_RANGE, req(C.CMD_WRITE_ZEROES, 0, 512)), C.ENOSPC);
  for (const type of [C.CMD_READ, C.CMD_TRIM, C.CMD_CACHE, C.CMD_BLOCK_STATUS]) {
    assert.equal(errno(REJECT_OUT_OF_RANGE, req(type, 0, 512)), C.EINVAL, `${type} past the end`);
  }
  for (const reason of [
    REJECT_UNKNOWN_COMMAND,
    REJECT_FLAGS,
    REJECT_DF_NOT_NEGOTIATED,
    REJECT_ZERO_LENGTH,
    REJECT_NOT_ZERO,
    REJECT_NO_META_CONTEXT,
  ]) {
    assert.equal(errno(reason, req(C.CMD_WRITE, 0, 512)), C.EINVAL, `reason ${reason}`);
  }
});
