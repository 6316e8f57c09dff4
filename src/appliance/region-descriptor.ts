/**
 * The descriptor an appliance keeps beside a region (issue 11: every shard of a fabric region
 * carries the region's descriptor, so another client can reopen the region from any appliance
 * that holds a shard). The appliance treats it as opaque JSON except for `generation`, which
 * only grows: a replacement is accepted iff its generation is higher than the stored one
 * (compare-and-set, atomic within the process because the check and the set run in one
 * synchronous step). The fabric defines the fields (src/catalog/descriptor.ts).
 */
import { DESCRIPTOR_BYTES_MAX } from '../catalog/descriptor.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

/**
 * Objects and arrays nest at most this deep in a descriptor (a real one nests about 4): bounds
 * the recursion that serializing it costs, wherever that happens.
 */
export const DESCRIPTOR_DEPTH_MAX = 32;

/** A descriptor as the appliance sees it: a JSON object with a whole, non-negative generation. */
export type StoredDescriptor = Record<string, unknown> & { generation: number };

/**
 * Checks a descriptor given to the admin API (`field` names it in the message): a JSON object
 * of at most DESCRIPTOR_BYTES_MAX serialized bytes with a non-negative safe-integer
 * `generation`. Returns a copy, so later changes to the caller's object cannot reach it.
 */
export function checkDescriptor(value: unknown, field = 'descriptor'): StoredDescriptor {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidArgument(`${field} must be a JSON object (the region's descriptor)`);
  }
  const depth = nestingDepth(value);
  if (depth > DESCRIPTOR_DEPTH_MAX) {
    throw invalidArgument(
      `${field} nests ${depth > DESCRIPTOR_DEPTH_MAX * 2 ? 'far ' : ''}deeper than ${DESCRIPTOR_DEPTH_MAX} levels of objects and arrays; a region descriptor needs a few`,
    );
  }
  const text = JSON.stringify(value);
  const bytes = Buffer.byteLength(text);
  if (bytes > DESCRIPTOR_BYTES_MAX) {
    throw invalidArgument(
      `${field} is ${bytes} bytes serialized; at most ${DESCRIPTOR_BYTES_MAX} are kept per region`,
    );
  }
  const generation = (value as { generation?: unknown }).generation;
  if (typeof generation !== 'number' || !Number.isSafeInteger(generation) || generation < 0) {
    throw invalidArgument(
      `${field}.generation must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, not ${JSON.stringify(generation) ?? 'missing'}`,
    );
  }
  return JSON.parse(text) as StoredDescriptor;
}

/** A descriptor read back from a region's metadata file, or undefined when it is unusable. */
export function readStoredDescriptor(value: unknown): StoredDescriptor | undefined {
  try {
    return value === undefined ? undefined : checkDescriptor(value);
  } catch {
    return undefined;
  }
}

/** The answer to a replacement whose generation is not higher than the stored one. */
export function staleGeneration(region: string, given: number, stored: number): MemfabricError {
  return new MemfabricError(
    ErrorCodes.STALE_GENERATION,
    `region ${region} holds descriptor generation ${stored}; generation ${given} is not newer ` +
      '(another client changed the region): reopen the region to read its current descriptor, then retry',
  );
}

/**
 * How deeply objects and arrays nest in `value` (a scalar: 0), counted without recursion and
 * stopping once past DESCRIPTOR_DEPTH_MAX, so any input costs a bounded stack.
 */
function nestingDepth(value: unknown): number {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [item, depth] = stack.pop()!;
    if (item === null || typeof item !== 'object') continue;
    if (depth > deepest) deepest = depth;
    if (deepest > DESCRIPTOR_DEPTH_MAX) return deepest;
    for (const child of Object.values(item as Record<string, unknown>)) stack.push([child, depth + 1]);
  }
  return deepest;
}
