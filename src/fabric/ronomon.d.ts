// Types for @ronomon/reed-solomon, which ships none (a native addon; see its README).
declare module '@ronomon/reed-solomon' {
  export interface Context {
    readonly __brand: 'ReedSolomonContext';
  }
  export const MAX_K: number;
  export const MAX_M: number;
  export function create(k: number, m: number): Context;
  export function encode(
    context: Context,
    sources: number,
    targets: number,
    buffer: Buffer,
    bufferOffset: number,
    bufferSize: number,
    parity: Buffer,
    parityOffset: number,
    paritySize: number,
    callback: (error: Error | undefined | null) => void,
  ): void;
  /**
   * target[targetOffset ..] ^= source[sourceOffset ..], `size` bytes, on the calling thread (any
   * Uint8Array: N-API takes every ArrayBufferView as a buffer). 8 bytes at a time when source
   * and target are equally aligned mod 8, else byte by byte.
   */
  export function XOR(
    source: Uint8Array,
    sourceOffset: number,
    target: Uint8Array,
    targetOffset: number,
    size: number,
  ): void;
}
