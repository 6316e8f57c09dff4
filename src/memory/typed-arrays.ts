/** Typed-array helpers for the memory core's growable tables. */

type Growable = Int32Array | Uint32Array | Uint16Array | Uint8Array | Float64Array;

/** A copy of `array` lengthened to `length` elements (new elements are zero). */
export function grown<T extends Growable>(array: T, length: number): T {
  const bigger = new (array.constructor as new (length: number) => T)(length);
  bigger.set(array);
  return bigger;
}
