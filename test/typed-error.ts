import assert from 'node:assert/strict';
import { MemfabricError } from '../src/errors.js';

/**
 * For assert.rejects / assert.throws: the error is a MemfabricError with `code`, and its
 * message contains every fragment (the path, the limit, what to do).
 */
export function typedError(code: string, ...fragments: string[]): (error: unknown) => boolean {
  return (error: unknown): boolean => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    for (const fragment of fragments)
      assert.ok(error.message.includes(fragment), `"${fragment}" in: ${error.message}`);
    return true;
  };
}

/**
 * What a call came to: 'ok', or the code of the MemfabricError it rejected with (anything else
 * is rethrown). For races where either outcome is right, e.g. `[ok, MF_ALREADY_EXISTS]`.
 */
export async function outcome(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'ok';
  } catch (error) {
    if (error instanceof MemfabricError) return error.code;
    throw error;
  }
}
