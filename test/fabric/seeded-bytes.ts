/**
 * Test bytes drawn from a seed (xorshift32): property tests take the seed from fast-check, so
 * a shrunk counterexample replays with exactly the same bytes.
 */
export function seededBytes(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed | 0 || 0x9e3779b9;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
