import type { MemfabricError } from '../errors.js';

/** How the command line reports a user-caused error on stderr: its message, then its code. */
export function describeError(error: MemfabricError): string {
  return `memfabric: ${error.message} (${error.code})`;
}
