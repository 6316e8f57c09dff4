/**
 * Atomics.waitAsync with its type: Node 20 has it, but the project's `lib` (ES2022) does not
 * declare it.
 */
export type WaitAsyncResult =
  { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };

const atomics = Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number, timeoutMs?: number): WaitAsyncResult;
};

/** Waits (without blocking) while `array[index] === value`, for at most `timeoutMs`. */
export function waitAsync(
  array: Int32Array,
  index: number,
  value: number,
  timeoutMs?: number,
): WaitAsyncResult {
  return atomics.waitAsync(array, index, value, timeoutMs);
}
