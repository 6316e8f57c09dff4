import { ErrorCodes, MemfabricError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
  p: 1024 ** 5,
  pib: 1024 ** 5,
};

/**
 * Parses a byte count: a non-negative integer, or a string such as `4096`, `512MiB`, `1GiB`,
 * `2G` (binary), `1.5GB` (decimal). The result must be a safe integer.
 */
export function parseSize(value: number | string, what = 'size'): number {
  let bytes: number;
  if (typeof value === 'number') {
    bytes = value;
  } else if (typeof value === 'string') {
    const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
    const unit = match ? UNITS[match[2]!.toLowerCase()] : undefined;
    if (!match || unit === undefined) {
      throw new MemfabricError(
        ErrorCodes.INVALID_SIZE,
        `${what} "${value}" is not a size: use bytes or a number with a unit such as 512MiB, 1GiB, 4KiB`,
      );
    }
    bytes = Math.round(Number(match[1]) * unit);
  } else {
    throw new MemfabricError(
      ErrorCodes.INVALID_SIZE,
      `${what} must be a number of bytes or a string like "1GiB"`,
    );
  }
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new MemfabricError(
      ErrorCodes.INVALID_SIZE,
      `${what} ${String(value)} must be a whole, non-negative number of bytes below 2^53`,
    );
  }
  return bytes;
}

/** Formats a byte count for people: 1536 -> "1.5 KiB". */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0
    ? `${bytes} B`
    : `${value.toFixed(value < 10 ? 2 : 1).replace(/\.?0+$/, '')} ${units[unit]}`;
}
