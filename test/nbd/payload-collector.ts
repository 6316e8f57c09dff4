import assert from 'node:assert/strict';
import type { RequestHeader, RequestSink } from '../../src/nbd/server/request-parser.js';

/**
 * The two payload calls of a RequestSink, assembling the pieces (copies: a piece is valid only
 * during its call) and checking the parser's promises about them: in order, never empty,
 * adding up to the request's length. `onPayload` then sees each payload whole.
 */
export function collectPayloads(
  onPayload: (req: RequestHeader, payload: Buffer) => void,
): Pick<RequestSink, 'onPayloadPiece' | 'onPayloadEnd'> {
  const pieces: Buffer[] = [];
  let received = 0;
  return {
    onPayloadPiece(req, piece, done) {
      assert.ok(piece.length > 0, 'a piece is never empty');
      assert.equal(done, received, 'pieces come in order, `done` counting what came before');
      received += piece.length;
      assert.ok(received <= req.length, 'pieces never run past the payload');
      pieces.push(Buffer.from(piece));
    },
    onPayloadEnd(req) {
      assert.equal(received, req.length, 'the pieces add up to the payload');
      const payload = Buffer.concat(pieces);
      pieces.length = 0;
      received = 0;
      onPayload(req, payload);
    },
  };
}
