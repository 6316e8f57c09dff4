/**
 * A small client for an appliance's admin API, shared by the CLI, the fabric and migration:
 * JSON in and out, a timeout on every call, and the API's `{ error: { code, message } }`
 * turned back into a MemfabricError with the same code.
 */
import { ErrorCodes, MemfabricError, type ErrorCode } from '../errors.js';

export const ADMIN_TIMEOUT_MS_DEFAULT = 30_000;

export async function adminRequest<T>(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = ADMIN_TIMEOUT_MS_DEFAULT,
): Promise<T> {
  let response: Response;
  try {
    response = await fetch(new URL(path, base), {
      method,
      ...(body === undefined
        ? {}
        : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    const timedOut = (error as Error).name === 'TimeoutError';
    throw new MemfabricError(
      timedOut ? ErrorCodes.TIMEOUT : ErrorCodes.CONNECTION_CLOSED,
      timedOut
        ? `the appliance at ${base} did not answer ${method} ${path} within ${timeoutMs} ms`
        : `cannot reach the appliance at ${base}; is it running? (start one with: memfabric appliance)`,
      { cause: error },
    );
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new MemfabricError(
      ErrorCodes.INTERNAL,
      `${method} ${path}: the appliance at ${base} answered ${response.status} with non-JSON`,
    );
  }
  if (!response.ok) {
    const error = (parsed as { error?: { code?: string; message?: string } }).error;
    throw new MemfabricError(
      (error?.code as ErrorCode | undefined) ?? ErrorCodes.INTERNAL,
      error?.message ?? `${method} ${path} failed with HTTP ${response.status}`,
    );
  }
  return parsed as T;
}
